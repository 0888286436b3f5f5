"""Dataset readers on tiny fixtures in each published layout (tests/fixtures_datasets.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from busmonai.data.readers import DOMAINS, READERS
from busmonai.data.readers.breast import read_breast
from busmonai.data.readers.bus_uclm import mask_class, read_bus_uclm
from busmonai.data.readers.busi import read_busi
from busmonai.data.readers.common import case_id_key, mask_target, pair_images_and_masks
from busmonai.data.readers.folder import read_folder
from busmonai.data.readers.qamebi import read_qamebi
from busmonai.data.readers.spreadsheet import ROW_KEY, find_sheet, normalize_header, read_sheet
from busmonai.data.readers.stu import read_stu
from busmonai.data.readers.udiat import read_udiat
from busmonai.data.records import RawCase
from busmonai.errors import BusmonaiInputError
from fixtures_datasets import (
    BOX,
    BREAST_ATTRIBUTES,
    BREAST_ROWS,
    EXPECTED,
    FIXTURES,
    GREEN,
    RED,
    SIZE,
    lesion_image,
    lesion_mask,
    make_breast_fixture,
    make_bus_uclm_fixture,
    make_busi_fixture,
    make_folder_fixture,
    make_qamebi_fixture,
    make_stu_fixture,
    make_udiat_fixture,
    write_sheet,
)


def _summary(cases: list[RawCase]) -> list[tuple[str, str, list[str]]]:
    return [(c.source, c.cls, [m.name for m in c.masks]) for c in cases]


def _reader(name: str):
    return READERS[name.removesuffix("-labeled")]


# --- every reader: cases, classes, masks, order, sources ------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_reader_lists_fixture_cases(tmp_path: Path, name: str) -> None:
    root = FIXTURES[name](tmp_path)
    cases = _reader(name)(root)
    assert _summary(cases) == EXPECTED[name]
    for case in cases:
        assert case.image.is_file() and all(m.is_file() for m in case.masks)
        # source: POSIX path relative to the dataset folder holding the files (root, or the one
        # folder inside it that holds them: BrEaST's images_and_masks/)
        assert case.image.as_posix().endswith("/" + case.source) and case.image.is_relative_to(root)
        assert "\\" not in case.source and not Path(case.source).is_absolute()
    # deterministic: a second call gives the same list, and so does a copy elsewhere
    assert _reader(name)(root) == cases
    copy = shutil.copytree(root, tmp_path / "copy" / root.name)
    assert _summary(_reader(name)(copy)) == EXPECTED[name]


def test_registry_names_and_domains() -> None:
    assert set(READERS) == {"busi", "udiat", "breast", "bus-uclm", "qamebi", "stu", "folder"}
    assert DOMAINS == {"busi": "BUSI", "udiat": "UDIAT", "breast": "BrEaST", "bus-uclm": "BUS-UCLM",
                       "qamebi": "QAMEBI", "stu": "STU", "folder": "folder"}


def test_mask_modes_and_resize_flags(tmp_path: Path) -> None:
    assert {c.mask_mode for c in read_bus_uclm(make_bus_uclm_fixture(tmp_path))} == {"color"}
    assert {c.mask_mode for c in read_udiat(make_udiat_fixture(tmp_path))} == {"gray"}
    stu = read_stu(make_stu_fixture(tmp_path))
    assert all(c.resize_masks and c.mask_mode == "gray" for c in stu)
    assert not any(c.resize_masks for c in read_qamebi(make_qamebi_fixture(tmp_path)))


def test_missing_root_is_an_input_error(tmp_path: Path) -> None:
    for reader in READERS.values():
        with pytest.raises(BusmonaiInputError, match="not found"):
            reader(tmp_path / "nowhere")


# --- BUSI -------------------------------------------------------------------------------------------


def test_busi_accepts_the_parent_folder(tmp_path: Path) -> None:
    make_busi_fixture(tmp_path)
    assert _summary(read_busi(tmp_path)) == EXPECTED["busi"]


def test_busi_benign_without_mask(tmp_path: Path) -> None:
    root = make_busi_fixture(tmp_path)
    (root / "benign" / "benign (10)_mask.png").unlink()
    with pytest.raises(BusmonaiInputError, match=r"benign \(10\)\.png.*without a mask"):
        read_busi(root)


def test_busi_stray_mask(tmp_path: Path) -> None:
    root = make_busi_fixture(tmp_path)
    lesion_mask().save(root / "malignant" / "malignant (7)_mask.png")
    with pytest.raises(BusmonaiInputError, match=r"malignant \(7\)_mask\.png.*without an image"):
        read_busi(root)


# --- UDIAT ------------------------------------------------------------------------------------------


def test_udiat_sheet_parsing(tmp_path: Path) -> None:
    root = make_udiat_fixture(tmp_path)
    sheet = read_sheet(root / "DatasetB.xlsx", required=(("image",), ("type",)))
    assert sheet.header == ("image", "type", "comment")
    assert [r[ROW_KEY] for r in sheet.rows] == [4, 5, 6, 7, 8, 9]  # title + blank line + header above
    assert [case_id_key(r["image"]) for r in sheet.rows] == ["1", "2", "3", "4", "5", "6"]


def test_udiat_missing_sheet(tmp_path: Path) -> None:
    root = make_udiat_fixture(tmp_path)
    (root / "DatasetB.xlsx").unlink()
    with pytest.raises(BusmonaiInputError, match="DatasetB.xlsx' not found"):
        read_udiat(root)


def test_udiat_image_without_row(tmp_path: Path) -> None:
    root = make_udiat_fixture(tmp_path)
    write_sheet(root / "DatasetB.xlsx", [["Image", "Type"], [1, "Benign"], [2, "Malignant"], [3, "B"], [5, "M"]])
    with pytest.raises(BusmonaiInputError, match=r"000004\.png: no row for image id '000004'"):
        read_udiat(root)


def test_udiat_unknown_type(tmp_path: Path) -> None:
    root = make_udiat_fixture(tmp_path)
    rows = [["Image", "Type"], [1, "Benign"], [2, "Malignant"], [3, "suspicious"], [4, "M"], [5, "B"]]
    write_sheet(root / "DatasetB.xlsx", rows)
    with pytest.raises(BusmonaiInputError, match=r"row 4: unknown type 'suspicious'"):
        read_udiat(root)


def test_udiat_missing_gt_mask(tmp_path: Path) -> None:
    root = make_udiat_fixture(tmp_path)
    (root / "GT" / "000003.png").unlink()
    with pytest.raises(BusmonaiInputError, match=r"000003\.png: no mask 'GT/000003\.png'"):
        read_udiat(root)


def test_udiat_sheet_without_header(tmp_path: Path) -> None:
    root = make_udiat_fixture(tmp_path)
    write_sheet(root / "DatasetB.xlsx", [["nothing", "here"], [1, "Benign"]])
    with pytest.raises(BusmonaiInputError, match="no header row naming image"):
        read_udiat(root)


def test_udiat_missing_gt_folder(tmp_path: Path) -> None:
    root = make_udiat_fixture(tmp_path)
    shutil.rmtree(root / "GT")
    with pytest.raises(BusmonaiInputError, match="no 'GT/' folder"):
        read_udiat(root)


# --- BrEaST -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_breast_attributes_and_ignored_other_masks(tmp_path: Path, suffix: str) -> None:
    root = make_breast_fixture(tmp_path, sheet_suffix=suffix)
    cases = read_breast(root)
    assert _summary(cases) == EXPECTED["breast"]
    assert [c.attributes for c in cases] == BREAST_ATTRIBUTES
    assert (cases[0].image.parent / "case001_other1.png").is_file()  # present on disk, not listed
    assert all("other" not in m.name for c in cases for m in c.masks)


def test_breast_images_directly_in_root(tmp_path: Path) -> None:
    root = make_breast_fixture(tmp_path)
    inner = root / "BrEaST-Lesions_USG-images_and_masks"
    for sheet in root.glob("*.xlsx"):
        sheet.rename(inner / sheet.name)
    assert _summary(read_breast(inner)) == EXPECTED["breast"]


def _rewrite_breast_sheet(root: Path, rows: list[list[object]]) -> None:
    for sheet in root.glob("*.xlsx"):
        sheet.unlink()
    write_sheet(root / "BrEaST-Lesions-USG-clinical-data.xlsx", rows)


def test_breast_missing_sheet(tmp_path: Path) -> None:
    root = make_breast_fixture(tmp_path)
    _rewrite_breast_sheet(root, [])
    (root / "BrEaST-Lesions-USG-clinical-data.xlsx").unlink()
    with pytest.raises(BusmonaiInputError, match="clinical-data sheet not found"):
        read_breast(root)


def test_breast_image_without_row(tmp_path: Path) -> None:
    root = make_breast_fixture(tmp_path)
    _rewrite_breast_sheet(root, BREAST_ROWS[:3] + BREAST_ROWS[4:])
    with pytest.raises(BusmonaiInputError, match=r"case003\.png: no row"):
        read_breast(root)


def test_breast_unknown_classification_and_descriptor(tmp_path: Path) -> None:
    root = make_breast_fixture(tmp_path)
    rows = [list(r) for r in BREAST_ROWS]
    rows[2][7] = "borderline"
    _rewrite_breast_sheet(root, rows)
    with pytest.raises(BusmonaiInputError, match=r"row 3: unknown classification 'borderline'"):
        read_breast(root)
    rows = [list(r) for r in BREAST_ROWS]
    rows[5][6] = "wavy"
    _rewrite_breast_sheet(root, rows)
    with pytest.raises(BusmonaiInputError, match=r"row 6: unknown margin value 'wavy'"):
        read_breast(root)


def test_breast_tumor_mask_missing_or_stray(tmp_path: Path) -> None:
    root = make_breast_fixture(tmp_path)
    inner = root / "BrEaST-Lesions_USG-images_and_masks"
    (inner / "case002_tumor.png").rename(inner / "case009_tumor.png")
    with pytest.raises(BusmonaiInputError, match=r"case009_tumor\.png: tumor mask without its image"):
        read_breast(root)
    (inner / "case009_tumor.png").unlink()
    with pytest.raises(BusmonaiInputError, match=r"case002\.png: malignant case without a tumor mask"):
        read_breast(root)


# --- BUS-UCLM ---------------------------------------------------------------------------------------


def test_bus_uclm_colour_classes(tmp_path: Path) -> None:
    root = make_bus_uclm_fixture(tmp_path)
    masks = root / "masks"
    assert [mask_class(masks / f"{n}.png") for n in ("ALWI_000", "ALWI_001", "ANAT_000", "ANAT_002")] == [
        "benign", "malignant", "normal", "benign"]


def _two_colour_mask(path: Path, red_width: int) -> None:
    mask = Image.new("RGB", SIZE)
    draw = ImageDraw.Draw(mask)
    draw.rectangle((0, 0, 19, 9), fill=GREEN)  # 200 px
    draw.rectangle((0, 20, red_width - 1, 29), fill=RED)  # 10 * red_width px
    mask.save(path)


def test_bus_uclm_colour_tie_and_majority(tmp_path: Path) -> None:
    root = make_bus_uclm_fixture(tmp_path)
    mask = root / "masks" / "ALWI_000.png"
    _two_colour_mask(mask, red_width=19)  # 200 green vs 190 red: near tie
    with pytest.raises(BusmonaiInputError, match=r"ALWI_000\.png: green .* near tie"):
        read_bus_uclm(root)
    _two_colour_mask(mask, red_width=30)  # 300 red vs 200 green: red majority
    assert mask_class(mask) == "malignant"


def test_bus_uclm_missing_mask_and_colourless_lesion(tmp_path: Path) -> None:
    root = make_bus_uclm_fixture(tmp_path)
    lesion_mask().save(root / "masks" / "ALWI_001.png")  # white lesion: no class colour
    with pytest.raises(BusmonaiInputError, match=r"ALWI_001\.png: lesion pixels that are neither green"):
        read_bus_uclm(root)
    (root / "masks" / "ALWI_001.png").unlink()
    with pytest.raises(BusmonaiInputError, match=r"ALWI_001\.png: no mask 'masks/ALWI_001\.png'"):
        read_bus_uclm(root)


# --- QAMEBI -----------------------------------------------------------------------------------------


def test_qamebi_accepts_parent_and_lowercase_class_folders(tmp_path: Path) -> None:
    root = make_qamebi_fixture(tmp_path)
    (root / "Benign").rename(root / "benign")
    cases = read_qamebi(tmp_path)
    assert [c.source for c in cases][:3] == ["benign/b1.png", "benign/b2.png", "benign/b10.png"]
    assert [c.cls for c in cases] == [cls for _, cls, _ in EXPECTED["qamebi"]]


def test_qamebi_image_without_mask(tmp_path: Path) -> None:
    root = make_qamebi_fixture(tmp_path)
    (root / "Malignant" / "masks" / "m2_Mask.png").unlink()
    with pytest.raises(BusmonaiInputError, match=r"m2\.png: malignant image without a mask"):
        read_qamebi(root)


def test_qamebi_stray_mask_and_no_class_folder(tmp_path: Path) -> None:
    root = make_qamebi_fixture(tmp_path)
    lesion_mask().save(root / "Benign" / "b7_mask.png")
    with pytest.raises(BusmonaiInputError, match=r"b7_mask\.png: mask without a matching image"):
        read_qamebi(root)
    with pytest.raises(BusmonaiInputError, match="no 'benign/' or 'malignant/' folder"):
        read_qamebi(root / "Benign")


# --- STU --------------------------------------------------------------------------------------------


def test_stu_masks_bigger_and_antialiased(tmp_path: Path) -> None:
    cases = read_stu(make_stu_fixture(tmp_path))
    assert cases[1].masks[0].parent.name == "masks"  # mask_2 found in a sub-folder
    mask = np.asarray(Image.open(cases[0].masks[0]))
    assert mask.shape == (2 * SIZE[1], 2 * SIZE[0])
    assert Image.open(cases[0].image).size == SIZE
    assert np.count_nonzero((mask > 10) & (mask < 245)) > 0  # grey edge pixels


def test_stu_missing_and_stray_masks(tmp_path: Path) -> None:
    root = make_stu_fixture(tmp_path)
    (root / "mask_10.png").rename(root / "mask_11.png")
    with pytest.raises(BusmonaiInputError, match=r"mask_11\.png: mask without an image 'Test_Image_11\.png'"):
        read_stu(root)
    (root / "mask_11.png").unlink()
    with pytest.raises(BusmonaiInputError, match=r"Test_Image_10\.png: no mask 'mask_10\.png'"):
        read_stu(root)
    with pytest.raises(BusmonaiInputError, match="no 'Test_Image_<k>.png' images"):
        read_stu(root / "masks")


# --- generic folder ---------------------------------------------------------------------------------


def test_folder_labels_must_list_every_image(tmp_path: Path) -> None:
    root = make_folder_fixture(tmp_path)
    write_sheet(root / "labels.csv", [["image", "class"], ["a.png", "benign"], ["b.jpg", "malignant"],
                                      ["d.png", "normal"]])
    with pytest.raises(BusmonaiInputError, match=r"labels\.csv: no row for image 'c\.png'"):
        read_folder(root)


def test_folder_label_errors(tmp_path: Path) -> None:
    root = make_folder_fixture(tmp_path)
    write_sheet(root / "labels.csv", [["image", "class"], ["a.png", "benign"], ["b.jpg", "malignant"],
                                      ["c.png", "cyst"], ["d.png", "normal"]])
    with pytest.raises(BusmonaiInputError, match=r"row 4: unknown class 'cyst'"):
        read_folder(root)
    write_sheet(root / "labels.csv", [["image", "class"], ["zz.png", "benign"]])
    with pytest.raises(BusmonaiInputError, match=r"row 2: image 'zz\.png' is not in"):
        read_folder(root)


def test_folder_mask_required_unless_normal(tmp_path: Path) -> None:
    root = make_folder_fixture(tmp_path)
    write_sheet(root / "labels.csv", [["image", "class"], ["a.png", "benign"], ["b.jpg", "malignant"],
                                      ["c.png", "benign"], ["d.png", "malignant"]])
    with pytest.raises(BusmonaiInputError, match=r"d\.png: malignant image without a mask"):
        read_folder(root)
    unlabeled = make_folder_fixture(tmp_path, labels=False)
    lesion_image(1).save(unlabeled / "images" / "e.png")
    with pytest.raises(BusmonaiInputError, match=r"e\.png: tumor image without a mask"):
        read_folder(unlabeled)


def test_folder_stray_mask(tmp_path: Path) -> None:
    root = make_folder_fixture(tmp_path, labels=False)
    lesion_mask().save(root / "masks" / "q_mask.png")
    with pytest.raises(BusmonaiInputError, match=r"q_mask\.png: mask without a matching image"):
        read_folder(root)


# --- shared helpers ---------------------------------------------------------------------------------


def test_mask_markers_and_case_ids() -> None:
    assert [mask_target(s) for s in ("a_mask", "a_Mask", "a mask", "mask_a", "a_mask_1", "a", "mammask")] == [
        "a", "a", "a", "a", "a", None, None]
    assert {case_id_key(v) for v in (1, 1.0, "1", "000001", "000001.png")} == {"1"}
    assert case_id_key("Case001.PNG") == case_id_key("case1") == "case1"


def test_pairing_side_by_side_and_split_folders(tmp_path: Path) -> None:
    files = [tmp_path / "x" / "images" / "a.png", tmp_path / "x" / "masks" / "a.png",
             tmp_path / "y" / "b.png", tmp_path / "y" / "b_mask.png", tmp_path / "y" / "b_mask_1.png",
             tmp_path / "y" / "c_mask.png"]
    images, masks_of, stray = pair_images_and_masks(files)
    assert images == [files[0], files[2]]
    assert masks_of == {files[0]: (files[1],), files[2]: (files[3], files[4])}
    assert stray == [files[5]]


def test_spreadsheet_csv_semicolons_and_header_keys(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("exported by tool\nImage File;Tumour Type\nx.png; Benign \n;\ny.png;M\n", encoding="utf-8")
    sheet = read_sheet(path, required=(("imagefile",), ("tumourtype",)))
    assert sheet.header == ("imagefile", "tumourtype")
    assert [(r["imagefile"], r["tumourtype"], r[ROW_KEY]) for r in sheet.rows] == [
        ("x.png", "Benign", 3), ("y.png", "M", 5)]
    assert normalize_header(" Mask_tumor-file name") == "masktumorfilename"
    assert sheet.where(sheet.rows[1]).endswith("labels.csv, row 5")


def test_find_sheet_prefers_named_and_rejects_ambiguous(tmp_path: Path) -> None:
    assert find_sheet(tmp_path) is None
    write_sheet(tmp_path / "notes.csv", [["a"]])
    write_sheet(tmp_path / "DatasetB.xlsx", [["Image", "Type"]])
    (tmp_path / "~$DatasetB.xlsx").write_bytes(b"lock")
    assert find_sheet(tmp_path, prefer=("datasetb",)) == tmp_path / "DatasetB.xlsx"
    with pytest.raises(BusmonaiInputError, match="several label sheets"):
        find_sheet(tmp_path, prefer=("clinical",))
    (tmp_path / "bad.xlsx").write_bytes(b"not a zip")
    with pytest.raises(BusmonaiInputError, match="cannot be read as an Excel workbook"):
        read_sheet(tmp_path / "bad.xlsx")


def test_fixture_masks_match_lesions() -> None:
    image = np.asarray(lesion_image(0))
    mask = np.asarray(lesion_mask()) > 127
    assert image[mask].mean() < 40 < image[~mask].mean()
    assert mask[(BOX[1] + BOX[3]) // 2, (BOX[0] + BOX[2]) // 2]
