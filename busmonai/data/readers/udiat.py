"""Reader for UDIAT Dataset B (Yap et al., IEEE J. Biomed. Health Inform. 22(4):1218-1226, 2018).

163 images from the UDIAT Diagnostic Centre, Sabadell (110 benign / 53 malignant in the paper,
109 / 54 in the sheet; the sheet is taken as the truth). Published layout (docs/method.md section 7)::

    <root>/original/000001.png ...    B-mode images
    <root>/GT/000001.png ...          binary lesion masks, same name as the image
    <root>/DatasetB.xlsx              one row per image: image id and type (Benign / Malignant)

Folder names are matched ignoring case, any image extension is accepted, and ``<root>`` may
also be the folder that contains the dataset's folder.
"""

from __future__ import annotations

from pathlib import Path

from busmonai.clinical.classes import TUMOR_CLASSES
from busmonai.data.readers.common import (
    case_id_key,
    descend,
    find_child,
    index_by_key,
    list_images,
    parse_class,
    relative_source,
    require_dir,
)
from busmonai.data.readers.spreadsheet import find_sheet, read_sheet
from busmonai.data.records import RawCase
from busmonai.errors import BusmonaiInputError

IMAGE_DIRS = ("original", "originals", "images")
MASK_DIRS = ("GT", "ground truth", "groundtruth", "masks")
ID_COLUMNS = ("image", "imageid", "imagename", "filename", "id", "name", "file")
TYPE_COLUMNS = ("type", "class", "classification", "label", "diagnosis", "tumortype", "lesiontype")


def _labels(root: Path) -> dict[str, str]:
    """Read the class of each image id (:func:`case_id_key`) from the dataset's sheet."""
    path = find_sheet(root, prefer=("datasetb",))
    if path is None:
        raise BusmonaiInputError(
            f"{root}: label sheet 'DatasetB.xlsx' not found; put the sheet published with UDIAT "
            "Dataset B (image id and Benign/Malignant type per image) in this folder"
        )
    sheet = read_sheet(path, required=(ID_COLUMNS, TYPE_COLUMNS))
    id_col, type_col = sheet.column(ID_COLUMNS), sheet.column(TYPE_COLUMNS)
    labels: dict[str, str] = {}
    for row in sheet.rows:
        if row[id_col] is None:
            continue
        cls = parse_class(row[type_col], allowed=TUMOR_CLASSES)
        if cls is None:
            raise BusmonaiInputError(
                f"{sheet.where(row)}: unknown type {row[type_col]!r} for image {row[id_col]!r}; "
                "use Benign or Malignant (B/M)"
            )
        key = case_id_key(row[id_col])
        if labels.get(key, cls) != cls:
            raise BusmonaiInputError(
                f"{sheet.where(row)}: image {row[id_col]!r} is listed twice with different types; "
                "keep one row per image"
            )
        labels[key] = cls
    return labels


def read_udiat(root: Path) -> list[RawCase]:
    """List UDIAT Dataset B cases: images of ``original/``, masks of ``GT/``, class from the sheet.

    Image ids are matched to the sheet's id column as zero-padded integers (``000001.png``,
    ``000001`` and ``1`` are one id). Rows for images that are not on disk are ignored.

    Raises:
        BusmonaiInputError: ``original/``, ``GT/`` or the sheet is missing, an image has no mask or
            no row in the sheet, or a row's type is neither benign nor malignant.
    """
    root = descend(require_dir(root), lambda d: find_child(d, IMAGE_DIRS) is not None)
    image_dir = find_child(root, IMAGE_DIRS)
    if image_dir is None:
        raise BusmonaiInputError(
            f"{root}: no 'original/' folder; point --root at UDIAT Dataset B's folder (the one "
            "holding original/, GT/ and DatasetB.xlsx)"
        )
    mask_dir = find_child(root, MASK_DIRS)
    if mask_dir is None:
        raise BusmonaiInputError(f"{root}: no 'GT/' folder of lesion masks; restore UDIAT Dataset B's GT/ folder")
    images = list_images(image_dir)
    if not images:
        raise BusmonaiInputError(f"{image_dir}: no images; restore UDIAT Dataset B's original/ folder")
    index_by_key(images, lambda p: case_id_key(p.name), "image")
    masks = index_by_key(list_images(mask_dir), lambda p: case_id_key(p.name), "mask")
    labels = _labels(root)
    cases: list[RawCase] = []
    for image in images:
        key = case_id_key(image.name)
        if key not in masks:
            raise BusmonaiInputError(
                f"{image}: no mask '{mask_dir.name}/{image.name}'; restore the mask or remove the image"
            )
        if key not in labels:
            raise BusmonaiInputError(
                f"{image}: no row for image id {image.stem!r} in the label sheet; add a row with its "
                "Benign/Malignant type or remove the image"
            )
        cases.append(
            RawCase(
                image=image,
                masks=(masks[key],),
                cls=labels[key],
                source=relative_source(image, root),
                mask_mode="gray",
            )
        )
    return cases

