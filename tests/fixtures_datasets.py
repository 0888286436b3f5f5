"""Tiny copies of the published dataset layouts, written into a test's ``tmp_path``.

Each ``make_<dataset>_fixture(root)`` writes 3-6 cases of 40x48 grey-noise images with a drawn
elliptic lesion (masks drawn from the same ellipses) in the dataset's published layout under
``root`` and returns the folder to pass to the reader (``--root``). :data:`EXPECTED` lists, per
dataset, what the reader must yield: ``(source, class, mask file names)`` in reader order.
The outputs are deterministic (fixed seeds), so tests of ``prepare`` can reuse them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SIZE = (48, 40)
"""Image size (width, height)."""

Box = tuple[int, int, int, int]
BOX: Box = (12, 10, 34, 28)
"""The lesion ellipse's bounding box (x0, y0, x1, y1)."""
BOX2: Box = (37, 3, 46, 11)
"""A second, small lesion (BUSI ``_mask_1``)."""
GREEN = (0, 255, 0)
RED = (255, 0, 0)


def lesion_image(seed: int, boxes: tuple[Box, ...] = (BOX,), size: tuple[int, int] = SIZE) -> Image.Image:
    """Grey noise (speckle-like) with dark elliptic lesions at ``boxes``; no lesion if empty."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(70, 170, size=(size[1], size[0]), dtype=np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for box in boxes:
        draw.ellipse(box, fill=30)
    return image


def lesion_mask(boxes: tuple[Box, ...] = (BOX,), size: tuple[int, int] = SIZE, color: Any = 255) -> Image.Image:
    """Binary mask of the ellipses (mode ``L``, or ``RGB`` if ``color`` is a triple)."""
    mode = "RGB" if isinstance(color, tuple) else "L"
    mask = Image.new(mode, size, (0, 0, 0) if mode == "RGB" else 0)
    draw = ImageDraw.Draw(mask)
    for box in boxes:
        draw.ellipse(box, fill=color)
    return mask


def antialiased_mask(box: Box = BOX, size: tuple[int, int] = SIZE, scale: int = 2) -> Image.Image:
    """STU-style mask: ``scale`` times the image size, drawn at 4x that and downsampled (grey edges)."""
    out = (size[0] * scale, size[1] * scale)
    fine = 4 * scale
    big = lesion_mask((tuple(v * fine for v in box),), size=(size[0] * fine, size[1] * fine))  # type: ignore[arg-type]
    return big.resize(out, Image.Resampling.LANCZOS)


def write_sheet(path: Path, rows: list[list[Any]]) -> Path:
    """Write ``rows`` (first the header, or title lines before it) as .xlsx (openpyxl) or .csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
        return path
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_busi_fixture(root: Path) -> Path:
    """BUSI: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/<cls> (k).png`` + ``_mask.png``.

    ``benign (2)`` has a second lesion in ``_mask_1.png``; ``normal (1)`` has no mask file.
    """
    top = root / "Dataset_BUSI_with_GT"
    for seed, (cls, k, boxes) in enumerate(
        [("benign", 1, (BOX,)), ("benign", 2, (BOX, BOX2)), ("benign", 10, (BOX,)), ("malignant", 1, (BOX,)),
         ("normal", 1, ())]
    ):
        stem = f"{cls} ({k})"
        _save(lesion_image(seed, boxes), top / cls / f"{stem}.png")
        for j, box in enumerate(boxes):
            _save(lesion_mask((box,)), top / cls / f"{stem}_mask{'' if j == 0 else f'_{j}'}.png")
    return top


UDIAT_TYPES = ["Benign", "MALIGNANT", "B", "m", "benign"]
"""Type cells of the UDIAT fixture's sheet, images 1 to 5."""


def make_udiat_fixture(root: Path) -> Path:
    """UDIAT Dataset B: ``DatasetB/original/00000k.png``, ``GT/00000k.png``, ``DatasetB.xlsx``.

    The sheet has a title line and a blank line above its header ``Image, Type, Comment``, ids
    written as ``1``, ``"000002"``, ``"000003.png"``, ``4.0`` and ``"5"``, and an extra row for
    image 6, which is not on disk.
    """
    top = root / "DatasetB"
    for k in range(1, 6):
        _save(lesion_image(100 + k), top / "original" / f"{k:06d}.png")
        _save(lesion_mask(), top / "GT" / f"{k:06d}.png")
    ids: list[Any] = [1, "000002", "000003.png", 4.0, "5"]
    rows: list[list[Any]] = [["UDIAT Dataset B labels"], [], ["Image", "Type", "Comment"]]
    rows += [[i, t, None] for i, t in zip(ids, UDIAT_TYPES)]
    rows.append([6, "Malignant", "image not distributed"])
    write_sheet(top / "DatasetB.xlsx", rows)
    return top


BREAST_ROWS: list[list[Any]] = [
    ["CaseID", "Image_filename", "Mask_tumor_filename", "Mask_other_filename", "Age", "Echogenicity", "Margin",
     "Classification"],
    [1, "case001.png", "case001_tumor.png", "case001_other1.png", 45, "hypoechoic", "circumscribed", "benign"],
    [2, "case002.png", "case002_tumor.png", None, 61, "heterogeneous",
     "not circumscribed - angular&spiculated", "malignant"],
    [3, "case003.png", None, None, 38, "not applicable", None, "normal"],
    [4, "case004.png", "case004_tumor.png", None, 52, "complex cystic/solid", None, "Benign"],
    [5, "case005.png", "case005_tumor.png", None, 70, "isoechoic", "not circumscribed - indistinct", "malignant"],
]
"""The BrEaST fixture's clinical-data sheet."""


def make_breast_fixture(root: Path, sheet_suffix: str = ".xlsx") -> Path:
    """BrEaST-Lesions_USG as downloaded: images and masks in
    ``BrEaST/BrEaST-Lesions_USG-images_and_masks/``, the clinical sheet beside that folder.

    ``case001`` also has a non-tumor finding ``case001_other1.png`` (to be ignored); ``case003``
    is normal without a mask.
    """
    top = root / "BrEaST"
    folder = top / "BrEaST-Lesions_USG-images_and_masks"
    for seed, row in enumerate(BREAST_ROWS[1:]):
        boxes = () if row[7] == "normal" else (BOX,)
        _save(lesion_image(200 + seed, boxes), folder / row[1])
        if row[2]:
            _save(lesion_mask(), folder / row[2])
        if row[3]:
            _save(lesion_mask((BOX2,)), folder / row[3])
    write_sheet(top / f"BrEaST-Lesions-USG-clinical-data-Dec-15-2023{sheet_suffix}", BREAST_ROWS)
    return top


BUS_UCLM_MASKS: dict[str, list[tuple[Box, tuple[int, int, int]]]] = {
    "ALWI_000": [(BOX, GREEN)],
    "ALWI_001": [(BOX, RED)],
    "ANAT_000": [],
    "ANAT_002": [(BOX, GREEN), ((2, 2, 6, 6), RED)],
    "BEAR_010": [(BOX, RED)],
}
"""Lesions (box, colour) of each BUS-UCLM fixture mask; empty = all black (normal)."""


def make_bus_uclm_fixture(root: Path) -> Path:
    """BUS-UCLM: ``BUS-UCLM/images/<NAME>_<k>.png`` and RGB ``masks/<same>.png``.

    Green = benign, red = malignant, black = normal; ``ANAT_002`` is mostly green with a small
    red spot (benign by majority).
    """
    top = root / "BUS-UCLM"
    for seed, (name, lesions) in enumerate(BUS_UCLM_MASKS.items()):
        _save(lesion_image(300 + seed, tuple(box for box, _ in lesions)), top / "images" / f"{name}.png")
        mask = Image.new("RGB", SIZE)
        draw = ImageDraw.Draw(mask)
        for box, colour in lesions:
            draw.ellipse(box, fill=colour)
        _save(mask, top / "masks" / f"{name}.png")
    return top


def make_qamebi_fixture(root: Path) -> Path:
    """QAMEBI as a class-folder tree using both mask sub-layouts.

    ``Benign/`` holds images with their masks side by side under three marker styles
    (``b1_mask.png``, ``b2 mask.png``, ``mask_b10.png``); ``Malignant/`` holds ``images/`` and
    ``masks/`` (``m1.png`` and ``m2_Mask.png``).
    """
    top = root / "QAMEBI"
    side = top / "Benign"
    for seed, (stem, mask_name) in enumerate([("b1", "b1_mask"), ("b2", "b2 mask"), ("b10", "mask_b10")]):
        _save(lesion_image(400 + seed), side / f"{stem}.png")
        _save(lesion_mask(), side / f"{mask_name}.png")
    split = top / "Malignant"
    for seed, (stem, mask_name) in enumerate([("m1", "m1"), ("m2", "m2_Mask")]):
        _save(lesion_image(410 + seed), split / "images" / f"{stem}.png")
        _save(lesion_mask(), split / "masks" / f"{mask_name}.png")
    return top


def make_stu_fixture(root: Path) -> Path:
    """STU-Hospital: ``Test_Image_<k>.png`` with ``mask_<k>.png``, masks at 2x the image size
    with anti-aliased edges; ``mask_2.png`` sits in a sub-folder ``masks/``."""
    top = root / "STU"
    for k in (1, 2, 10):
        _save(lesion_image(500 + k), top / f"Test_Image_{k}.png")
        _save(antialiased_mask(), (top / "masks" if k == 2 else top) / f"mask_{k}.png")
    return top


def make_folder_fixture(root: Path, labels: bool = True) -> Path:
    """Generic folder: ``images/`` (png and jpg), ``masks/`` (with and without ``_mask``).

    With ``labels`` a ``labels.csv`` gives a benign, a malignant, a benign and a normal image
    (``d.png``, without mask); without it the three lesion images are unlabeled.
    """
    top = root / ("folder_labeled" if labels else "folder")
    for seed, (name, mask_name) in enumerate([("a.png", "a_mask.png"), ("b.jpg", "b.png"), ("c.png", "c_mask.png")]):
        _save(lesion_image(600 + seed), top / "images" / name)
        _save(lesion_mask(), top / "masks" / mask_name)
    if labels:
        _save(lesion_image(610, ()), top / "images" / "d.png")
        write_sheet(top / "labels.csv", [["image", "class"], ["a.png", "benign"], ["b.jpg", "malignant"],
                                         ["c.png", "Benign"], ["d.png", "normal"]])
    return top


EXPECTED: dict[str, list[tuple[str, str, list[str]]]] = {
    "busi": [
        ("benign/benign (1).png", "benign", ["benign (1)_mask.png"]),
        ("benign/benign (2).png", "benign", ["benign (2)_mask.png", "benign (2)_mask_1.png"]),
        ("benign/benign (10).png", "benign", ["benign (10)_mask.png"]),
        ("malignant/malignant (1).png", "malignant", ["malignant (1)_mask.png"]),
        ("normal/normal (1).png", "normal", []),
    ],
    "udiat": [
        (f"original/{k:06d}.png", cls, [f"{k:06d}.png"])
        for k, cls in zip(range(1, 6), ["benign", "malignant", "benign", "malignant", "benign"])
    ],
    "breast": [
        ("case001.png", "benign", ["case001_tumor.png"]),
        ("case002.png", "malignant", ["case002_tumor.png"]),
        ("case003.png", "normal", []),
        ("case004.png", "benign", ["case004_tumor.png"]),
        ("case005.png", "malignant", ["case005_tumor.png"]),
    ],
    "bus-uclm": [
        ("images/ALWI_000.png", "benign", ["ALWI_000.png"]),
        ("images/ALWI_001.png", "malignant", ["ALWI_001.png"]),
        ("images/ANAT_000.png", "normal", []),
        ("images/ANAT_002.png", "benign", ["ANAT_002.png"]),
        ("images/BEAR_010.png", "malignant", ["BEAR_010.png"]),
    ],
    "qamebi": [
        ("Benign/b1.png", "benign", ["b1_mask.png"]),
        ("Benign/b2.png", "benign", ["b2 mask.png"]),
        ("Benign/b10.png", "benign", ["mask_b10.png"]),
        ("Malignant/images/m1.png", "malignant", ["m1.png"]),
        ("Malignant/images/m2.png", "malignant", ["m2_Mask.png"]),
    ],
    "stu": [
        ("Test_Image_1.png", "tumor", ["mask_1.png"]),
        ("Test_Image_2.png", "tumor", ["mask_2.png"]),
        ("Test_Image_10.png", "tumor", ["mask_10.png"]),
    ],
    "folder": [
        ("images/a.png", "tumor", ["a_mask.png"]),
        ("images/b.jpg", "tumor", ["b.png"]),
        ("images/c.png", "tumor", ["c_mask.png"]),
    ],
    "folder-labeled": [
        ("images/a.png", "benign", ["a_mask.png"]),
        ("images/b.jpg", "malignant", ["b.png"]),
        ("images/c.png", "benign", ["c_mask.png"]),
        ("images/d.png", "normal", []),
    ],
}
"""Per dataset (``folder-labeled`` = :func:`make_folder_fixture` with labels): what the reader
yields, in order: source relative to the returned root, class, mask file names."""

BREAST_ATTRIBUTES: list[dict[str, str]] = [
    {"echogenicity": "homogeneous", "boundary": "clear"},
    {"echogenicity": "heterogeneous", "boundary": "unclear"},
    {},
    {"echogenicity": "heterogeneous"},
    {"echogenicity": "homogeneous", "boundary": "unclear"},
]
"""The attributes the BrEaST fixture's descriptors map to, per case in order."""

FIXTURES = {
    "busi": make_busi_fixture,
    "udiat": make_udiat_fixture,
    "breast": make_breast_fixture,
    "bus-uclm": make_bus_uclm_fixture,
    "qamebi": make_qamebi_fixture,
    "stu": make_stu_fixture,
    "folder": lambda root: make_folder_fixture(root, labels=False),
    "folder-labeled": make_folder_fixture,
}
"""Name (as in :data:`EXPECTED`) -> fixture writer."""
