"""``busmonai prepare``: the datalist contract, determinism, and clean failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busmonai.cli import main
from busmonai.data.prepare import prepare_dataset
from busmonai.errors import BusmonaiInputError


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _source_counts(root: Path) -> dict[str, int]:
    return {
        cls: sum(1 for p in (root / cls).glob("*.png") if "_mask" not in p.stem)
        for cls in ("benign", "malignant", "normal")
        if (root / cls).is_dir()
    }


def test_datalist_contract(phantom_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    datalist = prepare_dataset("busi", phantom_source, out, size=32, seed=0, split="0.5,0.25,0.25", progress=False)
    assert json.loads((out / "datalist.json").read_text()) == datalist
    items = datalist["training"] + datalist["validation"] + datalist["test"]
    counts = _source_counts(phantom_source)
    for cls, n in counts.items():
        assert sum(item["class"] == cls for item in items) == n
    assert datalist["size"] == [32, 32] and datalist["name"] == "BUSI"
    for item in items:
        image = np.asarray(Image.open(out / item["image"]))
        mask = np.asarray(Image.open(out / item["mask"]))
        assert image.shape == mask.shape == (32, 32) and image.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert (phantom_source / item["source"]).is_file()
        assert item["domain"] == "BUSI"
        if item["class"] == "normal":
            assert item["label"] is None and item["bbox"] is None and not mask.any()
        else:
            assert item["label"] == {"benign": 0, "malignant": 1}[item["class"]]
            x0, y0, x1, y1 = item["bbox"]
            ys, xs = np.nonzero(mask)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert item["echogenicity"] in ("homogeneous", "heterogeneous")
            assert item["boundary"] in ("clear", "unclear")
            assert item["class"] in item["prompt"] and item["echogenicity"] in item["prompt"]
    rule = datalist["attribute_rule"]
    training_scores = [i["heterogeneity"] for i in datalist["training"] if i["class"] != "normal"]
    assert rule["heterogeneity_threshold"] == pytest.approx(float(np.median(training_scores)), abs=1e-6)
    assert not list(tmp_path.glob(".*partial"))


def test_second_run_same_bytes_and_seed_changes_split(phantom_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare_dataset("busi", phantom_source, out, size=32, progress=False)
    first = _files(out)
    prepare_dataset("busi", phantom_source, out, size=32, progress=False)
    assert _files(out) == first
    other = prepare_dataset("busi", phantom_source, tmp_path / "other", size=32, seed=1, progress=False)
    assert [i["source"] for i in other["test"]] != [i["source"] for i in json.loads(first["datalist.json"])["test"]]


def test_extra_lesion_masks_are_merged(phantom_copy: Path, tmp_path: Path) -> None:
    image_path = sorted((phantom_copy / "benign").glob("benign (*)_mask.png"))[0]
    first = np.asarray(Image.open(image_path)) > 0
    extra = np.zeros_like(first)
    extra[1:6, 1:6] = True  # a second lesion in the corner, away from the first
    assert not (first & extra).any()
    Image.fromarray(extra.astype(np.uint8) * 255).save(image_path.with_name(image_path.stem + "_1.png"))
    datalist = prepare_dataset("busi", phantom_copy, tmp_path / "out", size=first.shape[0], progress=False)
    stem = image_path.stem.removesuffix("_mask")
    item = next(i for s in ("training", "test") for i in datalist[s] if i["source"] == f"benign/{stem}.png")
    mask = np.asarray(Image.open(tmp_path / "out" / item["mask"])) > 0
    assert mask.sum() > 0
    # the merged, resized mask keeps the corner lesion: its bbox starts near the corner
    assert item["bbox"][0] <= 2 and item["bbox"][1] <= 2


def _break_missing_image(root: Path) -> Path:
    image = sorted((root / "malignant").glob("malignant (*).png"))[0]
    image.unlink()
    return image.with_name(image.stem + "_mask.png")


def _break_unreadable_image(root: Path) -> Path:
    image = sorted((root / "benign").glob("benign (*).png"))[0]
    image.write_bytes(b"not a png")
    return image


def _break_mask_size(root: Path) -> Path:
    mask = sorted((root / "benign").glob("*_mask.png"))[0]
    Image.open(mask).resize((20, 20)).save(mask)
    return mask


def _break_empty_mask(root: Path) -> Path:
    mask = sorted((root / "malignant").glob("*_mask.png"))[0]
    Image.fromarray(np.zeros_like(np.asarray(Image.open(mask)))).save(mask)
    return mask.with_name(mask.stem.removesuffix("_mask") + ".png")


@pytest.mark.parametrize(
    "breaker", [_break_missing_image, _break_unreadable_image, _break_mask_size, _break_empty_mask]
)
def test_bad_files_name_the_file_exit_2_and_leave_nothing(
    breaker, phantom_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    named = breaker(phantom_copy)
    out = tmp_path / "out"
    code = main(["prepare", "busi", "--root", str(phantom_copy), "--out", str(out), "--size", "32"])
    err = capsys.readouterr().err
    message = err.strip().splitlines()[-1]
    assert code == 2
    assert message.startswith("error: ") and named.name in message and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_unknown_dataset_and_out_inside_root(phantom_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "kaggle", "--root", str(phantom_copy), "--out", str(tmp_path / "o")]) == 2
    assert "unknown dataset 'kaggle'" in capsys.readouterr().err
    assert main(["prepare", "busi", "--root", str(phantom_copy), "--out", str(phantom_copy / "prepared")]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert not (phantom_copy / "prepared").exists()


def test_refuses_foreign_output_folder(phantom_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BusmonaiInputError, match="did not write"):
        prepare_dataset("busi", phantom_source, out, size=32, progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_cli_summary(phantom_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "busi", "--root", str(phantom_source), "--out", str(tmp_path / "p"), "--size", "32"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("prepared 12 images") and "datalist.json" in line


def test_real_busi_counts(shared_busi: Path, tmp_path: Path) -> None:
    out = tmp_path / "busi"
    datalist = prepare_dataset("busi", shared_busi, out, size=64, progress=False)
    expected = _source_counts(shared_busi)
    items = datalist["training"] + datalist["validation"] + datalist["test"]
    assert {cls: sum(i["class"] == cls for i in items) for cls in expected} == expected
    # multi-lesion images are merged into one mask file per image
    assert len(list((out / "masks").glob("*.png"))) == len(items)
    for split, counts in datalist["counts"].items():
        assert sum(counts.values()) == len(datalist[split])
    # echogenicity / boundary priors are informative: malignant lesions lean heterogeneous
    tumors = [i for i in items if i["label"] is not None]
    hetero = {c: np.mean([i["echogenicity"] == "heterogeneous" for i in tumors if i["class"] == c]) for c in ("benign", "malignant")}
    assert hetero["malignant"] > hetero["benign"]


@pytest.mark.parametrize("dataset", ["busi", "udiat", "breast", "bus-uclm", "qamebi", "stu", "folder"])
def test_prepare_every_reader_fixture(dataset: str, tmp_path: Path) -> None:
    from fixtures_datasets import EXPECTED, FIXTURES

    root = FIXTURES[dataset](tmp_path / "raw")
    out = tmp_path / "out"
    datalist = prepare_dataset(dataset, root, out, size=24, split="1,0,0", progress=False)
    items = datalist["training"]
    expected = EXPECTED[dataset]
    assert sorted((i["source"], i["class"]) for i in items) == sorted((s, c) for s, c, _ in expected)
    for item in items:
        mask = np.asarray(Image.open(out / item["mask"]))
        assert mask.shape == (24, 24) and set(np.unique(mask)) <= {0, 255}
        assert bool(mask.any()) == (item["class"] != "normal")
    if dataset == "breast":  # published BI-RADS descriptors win over derived ones
        assert any(i["attribute_source"] == "dataset" for i in items)
