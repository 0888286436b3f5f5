"""Inputs of the metrics: image sets from folders or datalists, and networks from checkpoints.

Every ``busmonai evaluate`` command takes its images from one of two kinds of source:

- **A folder** of images, searched recursively for ``.png``, ``.jpg`` and ``.jpeg`` files
  (any case), in sorted order. Skipped, so that the output folder of ``busmonai prepare``, of
  ``busmonai masks`` or of a sampler can be passed as it is: hidden files and folders (names
  starting with ``.``, e.g. the feature caches), files inside a folder named ``masks`` or
  ``mask``, files whose name contains ``_mask`` (the BUSI layout), and contact sheets
  (``sheet*.png``). To evaluate exactly a chosen list of files, pass a datalist instead.
- **A datalist** (a ``.json`` file): the output of ``busmonai prepare`` or a synthetic datalist.
  It is either a dict holding the lists ``training`` / ``validation`` / ``test`` (all three are
  used unless ``split`` names one) or a plain JSON list of items. Item paths are relative to the
  datalist's folder, or absolute paths inside it; a path leading outside it (``../x.png``,
  ``/elsewhere/x.png``) is refused unless the caller passes ``allow_external=True``. Items are
  filtered by class: an item's class is its ``class`` or, without one, ``benign`` /
  ``malignant`` for ``label`` 0 / 1; items with neither are kept.

Images are read with :func:`busmonai.data.imageio.load_gray` (greyscale float in [0, 255]).
Checkpoints of downstream networks (segmenter, classifier) are a TorchScript file (what the
bundles' ``ckpt_export`` writes) or a state dict together with the bundle config whose
``network_def`` builds the network (:func:`busmonai.bundles.load_bundle_network`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from busmonai.clinical.classes import LESION_CLASSES
from busmonai.data.imageio import load_gray, resize_gray, to_uint8
from busmonai.data.prepare import checked_item, item_place
from busmonai.errors import BusmonaiInputError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
"""File types an image folder is searched for (compared in lower case)."""
MASK_FOLDER_NAMES: tuple[str, ...] = ("masks", "mask")
"""Folders whose files are never taken as images of an image folder."""
SPLITS: tuple[str, ...] = ("training", "validation", "test")
CLASS_OF_LABEL: dict[int, str] = {0: "benign", 1: "malignant"}


@dataclass(frozen=True)
class ImageSource:
    """The files of one image set and where they came from.

    Attributes:
        paths: absolute image paths, in a fixed order.
        anchor: the folder the set belongs to (the image folder, or the datalist's folder); the
            feature cache lives here.
        origin: the folder or datalist the user named.
        items: for a datalist, the selected items (paths resolved), parallel to ``paths``;
            empty for a folder.
    """

    paths: tuple[Path, ...]
    anchor: Path
    origin: Path
    items: tuple[dict[str, Any], ...] = ()


def is_datalist(path: Path | str) -> bool:
    """True if ``path`` names a datalist file (a ``.json`` file) rather than a folder."""
    return Path(path).suffix.lower() == ".json"


def source_split(path: Path | str, split: str | None) -> str | None:
    """The split to read from ``path``: ``split`` for a datalist of real images, ``None`` (every
    image) for a folder and for a synthetic datalist (``busmonai generate``'s, ``"synthetic": true``,
    which holds its images in ``training`` only), so ``--split test`` picks the real test images
    while the whole synthetic set is compared with them."""
    if split is None or not is_datalist(path):
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return split  # datalist_items names the unreadable file
    return None if isinstance(data, dict) and data.get("synthetic") is True else split


def walk_image_files(folder: Path | str, kind: str = "images") -> list[tuple[Path, Path]]:
    """``(path, path relative to folder)`` of the image files under ``folder`` (recursive, sorted),
    without hidden files and contact sheets (``sheet*.png``).

    Args:
        folder: the folder to walk.
        kind: what the folder should hold, for the error message ("images", "masks").

    Raises:
        BusmonaiInputError: ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BusmonaiInputError(f"{folder}: no such folder; pass a folder of {kind} or a datalist .json")
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if any(part.startswith(".") for part in rel.parts) or path.name.lower().startswith("sheet"):
            continue
        found.append((path, rel))
    return found


def folder_images(folder: Path | str) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted, without masks, sheets and hidden files.

    Raises:
        BusmonaiInputError: ``folder`` does not exist or is not a folder.
    """
    return [
        path.resolve() for path, rel in walk_image_files(folder)
        if not any(part.lower() in MASK_FOLDER_NAMES for part in rel.parts[:-1]) and "_mask" not in path.name.lower()
    ]


def item_class(item: dict[str, Any]) -> str | None:
    """The class of a datalist item: ``class``, else from ``label`` 0 / 1, else ``None``."""
    if item.get("class") is not None:
        return str(item["class"])
    label = item.get("label")
    if isinstance(label, (int, float)) and not isinstance(label, bool) and int(label) in CLASS_OF_LABEL:
        return CLASS_OF_LABEL[int(label)]
    return None


def datalist_items(
    path: Path | str,
    split: str | None = None,
    classes: Sequence[str] | None = LESION_CLASSES,
    keys: Sequence[str] = ("image",),
    allow_external: bool = False,
) -> list[dict[str, Any]]:
    """Items of a datalist with the paths under ``keys`` resolved to absolute paths.

    Args:
        path: the datalist ``.json`` (a dict of split lists, or a list of items).
        split: one of ``training`` / ``validation`` / ``test``, or ``None`` for all of them.
        classes: keep items of these classes (and items of unknown class); ``None`` keeps all.
        keys: item keys that must be present and are resolved as paths.
        allow_external: accept paths leading outside the datalist's folder.

    Raises:
        BusmonaiInputError: missing or malformed file, unknown split, no item left after
            filtering, or a bad item: not an object, a key missing, null or not a string, a path
            leading outside the datalist's folder (the message names the datalist, the split,
            the item's index and the key).
    """
    path = Path(path)
    if not path.is_file():
        raise BusmonaiInputError(f"{path}: datalist not found; pass an existing datalist .json or a folder of images")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BusmonaiInputError(f"{path}: not a readable JSON datalist ({err}); re-create it") from err
    if split is not None and split not in SPLITS:
        raise BusmonaiInputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if isinstance(data, list):
        raw = [(item_place(index), item) for index, item in enumerate(data)]
    elif isinstance(data, dict) and any(isinstance(data.get(s), list) for s in SPLITS):
        raw = [(item_place(index, s), item) for s in ((split,) if split else SPLITS)
               for index, item in enumerate(data.get(s) or [])]
    else:
        raise BusmonaiInputError(
            f"{path}: neither a list of items nor a dict with 'training' / 'validation' / 'test' lists; "
            "pass a datalist written by 'busmonai prepare' or the sampler"
        )
    items = []
    for place, item in raw:
        item = checked_item(path, place, item)
        cls = item_class(item)
        if classes is not None and cls is not None and cls not in classes:
            continue
        items.append(checked_item(path, place, item, required=keys, paths=keys, allow_external=allow_external))
    if not items:
        where = f"the '{split}' split" if split else "any split"
        wanted = "/".join(classes) if classes is not None else "any"
        raise BusmonaiInputError(f"{path}: no {wanted} items in {where}; check the datalist, --split or the classes")
    return items


def image_source(
    source: Path | str, split: str | None = None, classes: Sequence[str] | None = LESION_CLASSES
) -> ImageSource:
    """Collect the images of a folder or a datalist (see the module docstring for the rules)."""
    source = Path(source)
    if is_datalist(source):
        items = datalist_items(source, split, classes)
        return ImageSource(
            paths=tuple(Path(i["image"]) for i in items), anchor=source.parent.resolve(), origin=source,
            items=tuple(items),
        )
    if split is not None:
        raise BusmonaiInputError(f"--split {split} applies to datalists, but {source} is a folder; drop --split")
    return ImageSource(paths=tuple(folder_images(source)), anchor=source.resolve(), origin=source)


def load_image_stack(
    paths: Sequence[Path], size: int | None = None, name: str = "images", minimum: int = 2
) -> np.ndarray:
    """Load greyscale images as one ``(N, H, W)`` uint8 array.

    Args:
        paths: image files.
        size: if given, every image is first resized to ``size x size`` (bicubic, antialiased, as
            ``busmonai prepare`` does) and rounded to uint8, as if saved at that resolution.
        name: what the set is called in error messages (e.g. ``REAL``).
        minimum: fewest images accepted.

    Raises:
        BusmonaiInputError: fewer than ``minimum`` images, an unreadable file, or images of
            mixed sizes when ``size`` is not given (the message names two files and the fix).
    """
    if len(paths) < minimum:
        raise BusmonaiInputError(
            f"{name}: {len(paths)} image(s) found but at least {minimum} are needed; "
            "add images or pass another folder or datalist"
        )
    if size is not None and size < 8:
        raise BusmonaiInputError(f"--size {size} is too small; use at least 8")
    arrays: list[np.ndarray] = []
    for path in paths:
        image = load_gray(Path(path))
        if size is not None and image.shape != (size, size):
            image = resize_gray(image, (size, size))
        elif size is None and arrays and image.shape != arrays[0].shape:
            first = arrays[0].shape
            raise BusmonaiInputError(
                f"{name}: images of mixed sizes: {paths[0]} is {first[1]}x{first[0]} px but {path} is "
                f"{image.shape[1]}x{image.shape[0]} px; pass --size N to compare them at one resolution"
            )
        arrays.append(to_uint8(image))
    return np.stack(arrays)


def load_mask_array(path: Path | str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Load a mask as a boolean array (binarised at half its maximum), optionally checking its shape."""
    mask = load_gray(Path(path))
    peak = float(mask.max())
    binary = mask > 0.5 * peak if peak > 0 else np.zeros(mask.shape, dtype=bool)
    if shape is not None and binary.shape != tuple(shape):
        raise BusmonaiInputError(
            f"{path}: mask is {binary.shape[1]}x{binary.shape[0]} px but its image is {shape[1]}x{shape[0]} px; "
            "fix the datalist"
        )
    return binary


def probability_fn(network: Callable[[torch.Tensor], torch.Tensor], activation: str = "auto",
                   channel: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a network that returns logits into a function returning probabilities.

    Args:
        network: maps ``(B, 1, H, W)`` images to ``(B, C, ...)`` or ``(B,)`` outputs.
        activation: ``sigmoid``, ``softmax`` (channel ``channel`` is kept), ``none`` (the
            network already returns probabilities), or ``auto``: sigmoid for one output channel,
            softmax for two or more.
        channel: the channel of the positive class (malignant, or lesion) for softmax outputs.

    Returns:
        A function ``images -> probabilities`` with the channel axis reduced to one channel
        (``(B, 1, H, W)`` for segmenters, ``(B,)`` or ``(B, 1)`` for classifiers).
    """
    if activation not in ("auto", "sigmoid", "softmax", "none"):
        raise BusmonaiInputError(f"unknown activation {activation!r}; use auto, sigmoid, softmax or none")

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        out = network(images)
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.float()
        channels = out.shape[1] if out.ndim >= 2 else 1
        mode = activation if activation != "auto" else ("sigmoid" if channels == 1 else "softmax")
        if mode == "softmax":
            return out.softmax(dim=1)[:, channel : channel + 1]
        return out.sigmoid() if mode == "sigmoid" else out

    return predict
