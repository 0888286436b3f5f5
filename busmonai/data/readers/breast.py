"""Reader for BrEaST-Lesions_USG (Pawłowska et al., "Curated benchmark dataset for ultrasound based
breast lesion analysis", Scientific Data, 2024).

Breast ultrasound scans with tumor masks and BI-RADS descriptors (docs/method.md section 7 counts 252
lesions: 154 benign / 98 malignant; normal scans are kept as class normal). Published layout::

    <root>/case001.png                 B-mode image
    <root>/case001_tumor.png           tumor mask (benign and malignant cases)
    <root>/case001_other1.png ...      masks of other, non-tumor findings: ignored here
    <root>/BrEaST-Lesions-USG-clinical-data-*.xlsx   (or .csv) one row per case, with columns
        Image_filename, Mask_tumor_filename, Classification (benign / malignant / normal),
        Echogenicity, Margin and further BI-RADS descriptors

The images may also sit in one sub-folder of ``<root>`` (the archive's
``BrEaST-Lesions_USG-images_and_masks/``) with the sheet beside that folder. Columns are matched
ignoring case, spaces and underscores. The published descriptors become the project's
attributes (docs/method.md section 3):

- ``Echogenicity``: heterogeneous or complex (cystic/solid) -> ``"heterogeneous"``; anechoic,
  hypoechoic, hyperechoic, isoechoic -> ``"homogeneous"``.
- ``Margin``: circumscribed -> boundary ``"clear"``; not circumscribed (indistinct, angular,
  microlobulated, spiculated) -> ``"unclear"``.

A blank or not-applicable descriptor leaves its key out of :attr:`RawCase.attributes`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from busmonai.data.readers.common import (
    case_id_key,
    descend,
    index_by_key,
    list_images,
    natural_key,
    parse_class,
    relative_source,
    require_dir,
)
from busmonai.data.readers.spreadsheet import Sheet, find_sheet, normalize_header, read_sheet
from busmonai.data.records import RawCase
from busmonai.errors import BusmonaiInputError

_MASK_RE = re.compile(r"^(?P<stem>.+?)_(?P<kind>tumou?r|other)(?:[ _-]?\d+)?$", re.IGNORECASE)
IMAGE_COLUMNS = ("imagefilename", "imagename", "image", "filename")
CASE_COLUMNS = ("caseid", "case")
CLASS_COLUMNS = ("classification", "class")
ECHO_COLUMNS = ("echogenicity", "echopattern")
MARGIN_COLUMNS = ("margin", "margins")
_NOT_GIVEN = {"", "-", "na", "n/a", "nan", "none", "notapplicable", "notavailable", "unknown", "nd"}
_NEGATIONS = ("not", "non")
_UNCLEAR_WORDS = ("indistinct", "angular", "microlobulated", "spiculated", "irregular", "obscured",
                  "illdefined", "uncircumscribed")
_CLEAR_WORDS = ("circumscribed", "welldefined", "smooth")


def _has_tumor_masks(folder: Path) -> bool:
    """True if ``folder`` holds at least one ``*_tumor`` mask image."""
    return any((m := _MASK_RE.match(p.stem)) and m["kind"].lower().startswith("tum") for p in list_images(folder))


def _echogenicity(value: str) -> str | None:
    """BI-RADS echo pattern -> ``"heterogeneous"``/``"homogeneous"``; None if not recognised."""
    text = normalize_header(value)
    if any(word in text for word in ("hetero", "complex", "mixed")):
        return "heterogeneous"
    if "echoic" in text or "homogen" in text:
        return "homogeneous"
    return None


def _boundary(value: str) -> str | None:
    """BI-RADS margin -> boundary ``"clear"``/``"unclear"``; None if not recognised."""
    words = re.split(r"[^a-z]+", value.lower())
    text = normalize_header(value)
    if any(w in _NEGATIONS for w in words) or any(word in text for word in _UNCLEAR_WORDS):
        return "unclear"
    if any(word in text for word in _CLEAR_WORDS):
        return "clear"
    return None


def _attributes(sheet: Sheet, row: dict[str, Any]) -> dict[str, str]:
    """The project's attributes from the BI-RADS descriptor cells of one sheet row."""
    attributes: dict[str, str] = {}
    for name, aliases, mapping, accepted in (
        ("echogenicity", ECHO_COLUMNS, _echogenicity, "heterogeneous, complex, anechoic, hypo-/hyper-/isoechoic"),
        ("boundary", MARGIN_COLUMNS, _boundary, "circumscribed or not circumscribed (indistinct, angular, ...)"),
    ):
        column = sheet.column(aliases)
        value = row.get(column) if column else None
        if value is None or normalize_header(value) in _NOT_GIVEN:
            continue
        mapped = mapping(str(value))
        if mapped is None:
            raise BusmonaiInputError(
                f"{sheet.where(row)}: unknown {column} value {value!r}; use a BI-RADS term "
                f"({accepted}) or leave the cell blank"
            )
        attributes[name] = mapped
    return attributes


def _rows_by_image(sheet: Sheet) -> dict[str, dict[str, Any]]:
    """Sheet rows keyed by :func:`case_id_key` of their image (file name, else case id)."""
    image_col = sheet.column(IMAGE_COLUMNS)
    case_col = sheet.column(CASE_COLUMNS)
    rows: dict[str, dict[str, Any]] = {}
    for row in sheet.rows:
        if image_col and row[image_col] is not None:
            key = case_id_key(row[image_col])
        elif case_col and row[case_col] is not None:
            key = case_id_key(row[case_col])
            key = f"case{key}" if key.isdigit() else key
        else:
            continue
        if key in rows:
            raise BusmonaiInputError(
                f"{sheet.where(row)}: image {key!r} is listed twice; keep one row per image"
            )
        rows[key] = row
    return rows


def read_breast(root: Path) -> list[RawCase]:
    """List BrEaST-Lesions_USG cases: class and descriptors from the clinical-data sheet.

    Raises:
        BusmonaiInputError: no images or no sheet, an image without a sheet row, an unknown
            classification or descriptor value, a benign/malignant image without a
            ``_tumor`` mask, a normal image with one, or a ``_tumor`` mask without its image.
    """
    given = require_dir(root)
    root = descend(given, _has_tumor_masks)
    sheet_path = find_sheet(root, prefer=("clinical", "breast")) or (
        find_sheet(given, prefer=("clinical", "breast")) if root != given else None
    )
    if sheet_path is None:
        raise BusmonaiInputError(
            f"{given}: clinical-data sheet not found; put BrEaST's "
            "'BrEaST-Lesions-USG-clinical-data-*.xlsx' (or a .csv export of it) in this folder"
        )
    sheet = read_sheet(sheet_path, required=(IMAGE_COLUMNS + CASE_COLUMNS, CLASS_COLUMNS))
    class_col = sheet.column(CLASS_COLUMNS)
    rows = _rows_by_image(sheet)

    images: list[Path] = []
    tumor_masks: dict[str, list[Path]] = {}
    for path in list_images(root):
        match = _MASK_RE.match(path.stem)
        if match is None:
            images.append(path)
        elif match["kind"].lower().startswith("tum"):
            tumor_masks.setdefault(case_id_key(match["stem"]), []).append(path)
    if not images:
        raise BusmonaiInputError(
            f"{root}: no case images (case001.png ...); point --root at BrEaST-Lesions_USG's folder"
        )
    image_index = index_by_key(images, lambda p: case_id_key(p.name), "image")
    for key, found in tumor_masks.items():
        if key not in image_index:
            raise BusmonaiInputError(
                f"{found[0]}: tumor mask without its image; restore the image or remove the mask"
            )

    cases: list[RawCase] = []
    for image in images:
        key = case_id_key(image.name)
        row = rows.get(key)
        if row is None:
            raise BusmonaiInputError(
                f"{image}: no row for '{image.name}' in {sheet_path.name}; add its row "
                "(Image_filename, Classification) or remove the image"
            )
        cls = parse_class(row[class_col])
        if cls is None:
            raise BusmonaiInputError(
                f"{sheet.where(row)}: unknown classification {row[class_col]!r} for '{image.name}'; "
                "use benign, malignant or normal"
            )
        masks = tuple(sorted(tumor_masks.get(key, []), key=lambda p: natural_key(p.name)))
        if cls != "normal" and not masks:
            raise BusmonaiInputError(
                f"{image}: {cls} case without a tumor mask '{image.stem}_tumor.png'; restore the mask"
            )
        if cls == "normal" and masks:
            raise BusmonaiInputError(
                f"{masks[0]}: tumor mask for a case classified normal in {sheet.where(row)}; "
                "fix the classification or remove the mask"
            )
        cases.append(
            RawCase(
                image=image,
                masks=masks,
                cls=cls,
                source=relative_source(image, root),
                mask_mode="gray",
                attributes=_attributes(sheet, row),
            )
        )
    return cases
