"""Small helpers shared by the dataset readers."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from busmonai.clinical.classes import IMAGE_CLASSES
from busmonai.errors import BusmonaiInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def natural_key(text: str) -> list[object]:
    """Sort key that orders ``benign (2)`` before ``benign (10)``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def require_dir(root: Path | str) -> Path:
    """Return ``root`` as a Path, or raise if it is not an existing folder."""
    root = Path(root)
    if not root.is_dir():
        raise BusmonaiInputError(f"{root}: dataset folder not found; pass the dataset's folder as --root")
    return root


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, naturally sorted."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )


# --- helpers shared by the readers of UDIAT, BrEaST, BUS-UCLM, QAMEBI, STU and generic folders ---

IMAGE_DIR_NAMES: tuple[str, ...] = ("images", "image", "imgs", "img", "original", "originals")
"""Folder names (lower case) that hold the images of a split ``images/`` + ``masks/`` layout."""

MASK_DIR_NAMES: tuple[str, ...] = ("masks", "mask", "gt", "groundtruth", "ground truth")
"""Folder names (lower case) that hold the masks of a split ``images/`` + ``masks/`` layout."""

_MASK_SUFFIX_RE = re.compile(r"^(?P<stem>.+?)[ _-]mask(?:[ _-]?\d+)?$", re.IGNORECASE)
_MASK_PREFIX_RE = re.compile(r"^mask[ _-](?P<stem>.+)$", re.IGNORECASE)
_TRAILING_NUMBER_RE = re.compile(r"^(?P<prefix>.*?)0*(?P<number>\d+)$")
_CLASS_WORDS: dict[str, str] = {
    "benign": "benign",
    "b": "benign",
    "malignant": "malignant",
    "m": "malignant",
    "normal": "normal",
    "n": "normal",
    "tumor": "tumor",
    "tumour": "tumor",
}


def find_child(folder: Path, names: tuple[str, ...] | list[str], *, directory: bool = True) -> Path | None:
    """The entry of ``folder`` whose name equals one of ``names``, ignoring case.

    Args:
        folder: the folder to look in.
        names: accepted names, in order of preference.
        directory: look for a folder (True) or a file (False).

    Returns:
        The first match in the order of ``names``, or None.
    """
    if not folder.is_dir():
        return None
    entries = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir() == directory}
    for name in names:
        if name.lower() in entries:
            return entries[name.lower()]
    return None


def descend(root: Path, accept: Callable[[Path], bool]) -> Path:
    """``root`` if it holds the dataset, else its only sub-folder that does.

    Archives often unpack into one extra folder (``Dataset_BUSI_with_GT/``, ``DatasetB/``); this
    lets ``--root`` point at either level. If neither ``root`` nor exactly one sub-folder is
    accepted, ``root`` is returned and the caller reports the broken layout.
    """
    if accept(root):
        return root
    inside = [d for d in sorted(root.iterdir(), key=lambda p: natural_key(p.name)) if d.is_dir() and accept(d)]
    return inside[0] if len(inside) == 1 else root


def relative_source(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form: the datalist's ``source`` field."""
    return path.relative_to(root).as_posix()


def path_key(path: Path, root: Path) -> list[list[object]]:
    """Natural sort key of ``path`` relative to ``root``, folder by folder."""
    return [natural_key(part) for part in path.relative_to(root).parts]


def walk_images(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` (hidden entries skipped), in natural path order."""
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: path_key(p, folder))


def index_by_key(paths: list[Path], key: Callable[[Path], str], what: str) -> dict[str, Path]:
    """Map ``key(path) -> path``; two files with one key are an input error.

    Args:
        paths: files to index.
        key: the matching key of a file (e.g. its lower-case stem).
        what: what the files are, for the error message ("mask", "image").
    """
    index: dict[str, Path] = {}
    for path in paths:
        k = key(path)
        if k in index:
            raise BusmonaiInputError(
                f"{path}: two {what} files for one case ('{index[k].name}' and '{path.name}'); "
                "keep only one of them"
            )
        index[k] = path
    return index


def mask_target(stem: str) -> str | None:
    """The image stem a mask file name refers to, or None if the name carries no mask marker.

    Recognised markers: ``<stem>_mask``, ``<stem>_Mask``, ``<stem> mask``, ``<stem>-mask``,
    ``<stem>_mask_1`` (extra lesions) and ``mask_<stem>``.
    """
    match = _MASK_SUFFIX_RE.match(stem) or _MASK_PREFIX_RE.match(stem)
    return match["stem"] if match else None


def _pair_folder(path: Path) -> Path:
    """The folder that identifies a case: the parent of ``images/``/``masks/``, else the file's own."""
    folder = path.parent
    if folder.name.lower() in IMAGE_DIR_NAMES + MASK_DIR_NAMES:
        folder = folder.parent
    return folder


def pair_images_and_masks(files: list[Path]) -> tuple[list[Path], dict[Path, tuple[Path, ...]], list[Path]]:
    """Split image files into images and masks and pair each mask with its image.

    A file is a mask if its name carries a marker (:func:`mask_target`) or it lies in a mask
    folder (:data:`MASK_DIR_NAMES`). A mask pairs with the image of the same stem (case-insensitive)
    either in the same folder or in a sibling image folder (``x/images/a.png`` with
    ``x/masks/a.png`` or ``x/masks/a_mask.png``).

    Args:
        files: candidate image and mask files, in the order images should be listed.

    Returns:
        ``(images, masks_of, stray)``: images in input order, their masks (naturally sorted; an
        image without masks is absent from ``masks_of``), and masks that match no image.
    """
    images: list[Path] = []
    masks: list[tuple[Path, str]] = []
    for path in files:
        target = mask_target(path.stem)
        if path.parent.name.lower() in MASK_DIR_NAMES:
            masks.append((path, target or path.stem))
        elif target is not None:
            masks.append((path, target))
        else:
            images.append(path)
    image_index = index_by_key(images, lambda p: f"{_pair_folder(p).as_posix()}|{p.stem.lower()}", "image")
    masks_of: dict[Path, list[Path]] = {}
    stray: list[Path] = []
    for path, target in masks:
        image = image_index.get(f"{_pair_folder(path).as_posix()}|{target.lower()}")
        if image is None:
            stray.append(path)
        else:
            masks_of.setdefault(image, []).append(path)
    ordered = {image: tuple(sorted(found, key=lambda p: natural_key(p.name))) for image, found in masks_of.items()}
    return images, ordered, stray


def raise_stray_mask(mask: Path) -> None:
    """Raise the input error for a mask file that matches no image."""
    raise BusmonaiInputError(
        f"{mask}: mask without a matching image (expected an image with the same stem, without "
        "the mask marker, next to it or in the sibling 'images/' folder); restore the image or "
        "remove the stray mask"
    )


def case_id_key(value: object) -> str:
    """Matching key of a case id given as a file name, a string or a number.

    ``1``, ``1.0``, ``"1"``, ``"000001"`` and ``"000001.png"`` all give ``"1"``;
    ``"case001.png"`` and ``"Case1"`` give ``"case1"``: image extensions and leading zeros of
    the trailing number are dropped and letters are lower-cased.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if Path(text).suffix.lower() in IMAGE_SUFFIXES:
        text = text[: -len(Path(text).suffix)]
    text = text.replace("\\", "/").rsplit("/", 1)[-1].lower()
    match = _TRAILING_NUMBER_RE.match(text)
    return f"{match['prefix']}{int(match['number'])}" if match else text


def parse_class(value: object, allowed: tuple[str, ...] = IMAGE_CLASSES) -> str | None:
    """The class named by a label cell (``Benign``, ``B``, ``malignant``, ``M``, ``normal``...).

    Returns:
        One of ``allowed``, or None if ``value`` names no allowed class.
    """
    cls = _CLASS_WORDS.get(str(value).strip().lower()) if value is not None else None
    return cls if cls in allowed else None
