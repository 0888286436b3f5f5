"""Reader for a generic dataset folder: any images with masks, with or without class labels.

Layout (a user's own data, or a dataset converted by hand)::

    <root>/images/<name>.<ext>            any image format
    <root>/masks/<name>[_mask].<ext>      same stem, ``_mask`` marker optional, any image format
    <root>/labels.csv                     optional: columns ``image,class`` with
                                          class benign / malignant / normal (or tumor)

Without ``labels.csv`` every image is a lesion of unknown class (``"tumor"``) and needs a mask.
With it, every image must have a row (``image`` = its file name in ``images/``, the extension
may be left out) and every row an image; only normal images may go without a mask.
"""

from __future__ import annotations

from pathlib import Path

from busmonai.data.readers.common import (
    find_child,
    list_images,
    pair_images_and_masks,
    parse_class,
    raise_stray_mask,
    relative_source,
    require_dir,
)
from busmonai.data.readers.spreadsheet import read_sheet
from busmonai.data.records import CLASSES, RawCase
from busmonai.errors import BusmonaiInputError

LABELS_FILE = "labels.csv"
IMAGE_COLUMNS = ("image", "filename", "file", "name")
CLASS_COLUMNS = ("class", "label", "classification")


def _read_labels(path: Path, images: list[Path]) -> dict[Path, str]:
    """Class of every image from ``labels.csv``; every image needs a row and every row an image."""
    sheet = read_sheet(path, required=(IMAGE_COLUMNS, CLASS_COLUMNS))
    image_col, class_col = sheet.column(IMAGE_COLUMNS), sheet.column(CLASS_COLUMNS)
    by_name = {p.name.lower(): p for p in images}
    by_stem = {p.stem.lower(): p for p in images}
    labels: dict[Path, str] = {}
    for row in sheet.rows:
        name = Path(str(row[image_col] or "").replace("\\", "/")).name.lower()
        image = by_name.get(name) or by_stem.get(name)
        if image is None:
            raise BusmonaiInputError(
                f"{sheet.where(row)}: image {row[image_col]!r} is not in {path.parent / 'images'}; "
                "fix the file name or remove the row"
            )
        cls = parse_class(row[class_col], allowed=CLASSES)
        if cls is None:
            raise BusmonaiInputError(
                f"{sheet.where(row)}: unknown class {row[class_col]!r} for {row[image_col]!r}; "
                "use benign, malignant or normal"
            )
        if image in labels:
            raise BusmonaiInputError(f"{sheet.where(row)}: {image.name} is listed twice; keep one row per image")
        labels[image] = cls
    for image in images:
        if image not in labels:
            raise BusmonaiInputError(
                f"{path}: no row for image '{image.name}'; add '{image.name},<class>' "
                "(benign, malignant or normal) or remove the image"
            )
    return labels


def read_folder(root: Path) -> list[RawCase]:
    """List the cases of a generic ``images/`` + ``masks/`` folder, classes from ``labels.csv``.

    Raises:
        BusmonaiInputError: no ``images/`` folder or no image in it, a mask without its image,
            ``labels.csv`` missing an image or naming an unknown one or an unknown class, or an
            image other than normal without a mask.
    """
    root = require_dir(root)
    image_dir = find_child(root, ("images",))
    if image_dir is None or not list_images(image_dir):
        raise BusmonaiInputError(
            f"{root}: no images in an 'images/' folder; put the images in {root / 'images'} and "
            f"their masks in {root / 'masks'}"
        )
    mask_dir = find_child(root, ("masks",))
    files = list_images(image_dir) + (list_images(mask_dir) if mask_dir else [])
    images, masks_of, stray = pair_images_and_masks(files)
    if stray:
        raise_stray_mask(stray[0])
    labels_path = find_child(root, (LABELS_FILE,), directory=False)
    labels = _read_labels(labels_path, images) if labels_path else {}
    cases: list[RawCase] = []
    for image in images:
        cls = labels.get(image, "tumor")
        masks = masks_of.get(image, ())
        if cls != "normal" and not masks:
            raise BusmonaiInputError(
                f"{image}: {cls} image without a mask '{image.stem}.png' or '{image.stem}_mask.png' in "
                f"{root / 'masks'}; add the mask, or mark the image normal in {root / LABELS_FILE}"
            )
        cases.append(RawCase(image=image, masks=masks, cls=cls, source=relative_source(image, root)))
    return cases
