"""Datalists -> item lists and tensors for the bundles' MONAI datasets.

Bundles read prepared datalists (docs/design.md, "Data contract") through :func:`datalist_split`, which
resolves paths, filters classes, checks the configured image size, and holds out a validation
subset when the datalist has none. :class:`LoadPNGd` loads the PNGs as (1, H, W) float tensors
in [0, 1] and names the file and the config key when one does not fit.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from PIL import Image

from busmonai.clinical.classes import IMAGE_CLASSES, TUMOR_CLASSES
from busmonai.data.imageio import open_image
from busmonai.data.prepare import PATH_KEYS, checked_item, item_place, load_datalist
from busmonai.errors import BusmonaiInputError

ALL_CLASSES: tuple[str, ...] = IMAGE_CLASSES
"""The classes a split holds by default (those ``busmonai prepare`` labels from BUSI's folders)."""


def datalist_split(
    datalist: str | Path,
    split: str = "training",
    classes: Sequence[str] = ALL_CLASSES,
    image_size: int | None = None,
    holdout: float = 0.0,
    seed: int = 0,
    keys: Sequence[str] = ("image",),
    allow_external: bool = False,
) -> list[dict[str, Any]]:
    """Items of one split with absolute ``image`` / ``mask`` paths.

    Args:
        datalist: path of a datalist written by ``busmonai prepare`` (or the synthesis pipeline).
        split: ``training``, ``validation`` or ``test``. With ``holdout > 0``, ``training`` and
            ``validation`` are cut from the training list when the datalist's own validation
            list is empty: ``validation`` is a seeded ``holdout`` fraction of training and
            ``training`` the rest.
        classes: keep only items of these classes.
        image_size: the configured image side; a datalist of another size is an error naming
            the ``image_size`` key and the fix.
        holdout: fraction of training held out as validation when the datalist has none.
        seed: seed of that holdout.
        keys: item keys to keep (others are dropped so batches collate; e.g. ``label`` is null
            for normal images). A kept key missing or null in an item is an error.
        allow_external: accept ``image`` / ``mask`` paths outside the datalist's folder
            (absolute, or climbing out with ``..``); refused by default.

    Raises:
        BusmonaiInputError: missing datalist, unknown split, size mismatch, no item left, or a
            bad item (not an object, a kept key missing or null, a path that is not a string or
            leads outside the datalist's folder); item errors name the datalist, the split, the
            item's index in it and the key.
    """
    path = Path(datalist)
    data = load_datalist(path)
    if split not in ("training", "validation", "test"):
        raise BusmonaiInputError(f"unknown split {split!r}; use training, validation or test")
    if image_size is not None and "size" in data and list(data["size"]) != [image_size, image_size]:
        raise BusmonaiInputError(
            f"{path}: images are {data['size'][0]}x{data['size'][1]} px but the bundle's 'image_size' is "
            f"{image_size}; re-run 'busmonai prepare ... --size {image_size}' or pass --image_size {data['size'][0]}"
        )
    source = split
    pairs = _split_objects(path, data, split)
    if holdout > 0 and split in ("training", "validation") and not data.get("validation"):
        source = "training"
        pool = [(k, item) for k, item in _split_objects(path, data, source) if item.get("class") in classes]
        order = np.random.default_rng(seed).permutation(len(pool))
        n_val = max(1, int(round(holdout * len(pool)))) if len(pool) > 1 else 0
        chosen = set(order[:n_val].tolist())
        pairs = [pair for k, pair in enumerate(pool) if (k in chosen) == (split == "validation")]
    pairs = [(k, item) for k, item in pairs if item.get("class") in classes]
    if not pairs:
        raise BusmonaiInputError(
            f"{path}: no {'/'.join(classes)} items in the '{split}' split; check the datalist or the split fractions"
        )
    path_keys = [key for key in keys if key in PATH_KEYS]
    kept: list[dict[str, Any]] = []
    for index, item in pairs:
        entry = checked_item(path, item_place(index, source), item, required=keys, paths=path_keys,
                             allow_external=allow_external, fix="re-run 'busmonai prepare' or select other classes")
        kept.append({key: entry[key] for key in keys})
    return kept


def split_items(
    datalist: str | Path,
    split: str = "training",
    classes: Sequence[str] = ALL_CLASSES,
    required: Sequence[str] = ("image",),
    allow_external: bool = False,
) -> list[dict[str, Any]]:
    """Whole items (every field, paths as written) of one split's ``classes``, each checked.

    For readers that need an item's other fields (attributes, source names) besides its files:
    every item of the split must be a JSON object; those of ``classes`` must carry ``required``
    (not null) and file paths that stay inside the datalist's folder, as :func:`datalist_split`
    checks. Paths are returned as written, relative to the datalist's folder.

    Raises:
        BusmonaiInputError: missing datalist, a split that is not a list, an item that is not an
            object, a required key missing or null, a path that is not a string or leads outside;
            item errors name the datalist, the split, the item's index and the key.
    """
    path = Path(datalist)
    data = load_datalist(path)
    kept: list[dict[str, Any]] = []
    for index, item in _split_objects(path, data, split):
        if item.get("class") in classes:
            checked_item(path, item_place(index, split), item, required=required, paths=PATH_KEYS,
                         allow_external=allow_external, fix="re-run 'busmonai prepare' or fix the datalist")
            kept.append(item)
    return kept


def _split_objects(path: Path, data: Mapping[str, Any], split: str) -> list[tuple[int, dict[str, Any]]]:
    """``(index, item)`` of a split's list, every item checked to be a JSON object."""
    raw = data.get(split) or []
    if not isinstance(raw, list):
        raise BusmonaiInputError(f"{path}: the '{split}' split is a JSON {type(raw).__name__}, not a list of items; "
                                 "fix the datalist or re-run 'busmonai prepare'")
    return [(index, checked_item(path, item_place(index, split), item)) for index, item in enumerate(raw)]


class LoadPNGd(MapTransform):
    """Load greyscale PNGs as float32 tensors (1, H, W) in [0, 1], checking their size.

    Args:
        keys: item keys holding file paths (e.g. ``image``, ``mask``).
        image_size: expected side; another size is an error naming the file and ``image_size``.
        binary_keys: keys binarised at half their maximum (masks stored as 0/255 or 0/1).
        conform: accept images of any size and colour mode (as MONAI Label's datastore holds
            them): convert to greyscale and resize to ``image_size`` (masks: nearest neighbour)
            instead of refusing them. Prepared datalists already conform.
    """

    def __init__(self, keys: Sequence[Hashable] | Hashable, image_size: int | None = None,
                 binary_keys: Sequence[Hashable] = ("mask",), conform: bool = False) -> None:
        super().__init__(keys)
        self.image_size = image_size
        self.binary_keys = set(binary_keys)
        self.conform = conform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.load(out[key], binary=key in self.binary_keys)
        return out

    def load(self, path: str | Path, binary: bool = False) -> torch.Tensor:
        """Load one file (see class docstring)."""
        image = open_image(path, fix="re-run 'busmonai prepare'")  # refuses decompression bombs too
        if self.conform:
            image = image.convert("L") if image.mode not in ("L", "1") else image
            if self.image_size is not None and image.size != (self.image_size, self.image_size):
                image = image.resize((self.image_size, self.image_size),
                                     Image.NEAREST if binary else Image.BILINEAR)
        if image.mode not in ("L", "1", "I;16", "I"):
            raise BusmonaiInputError(
                f"{path}: {len(image.getbands())}-channel image ({image.mode}) but the bundles take single-channel "
                "images (in_channels 1); prepare the data with 'busmonai prepare', which converts to greyscale"
            )
        raw = np.asarray(image.convert("L"), dtype=np.float32)
        array = raw / 255.0
        if self.image_size is not None and array.shape != (self.image_size, self.image_size):
            raise BusmonaiInputError(
                f"{path}: image is {array.shape[1]}x{array.shape[0]} px but 'image_size' is {self.image_size}; "
                f"re-run 'busmonai prepare ... --size {self.image_size}' or set --image_size"
            )
        if binary:
            peak = float(raw.max())
            array = (raw >= peak / 2).astype(np.float32) if peak > 0 else np.zeros_like(raw)
        return torch.from_numpy(array)[None]


class Greyscaled(MapTransform):
    """Reduce channel-first images to one channel (the mean of RGB / RGBA's colour channels).

    Ultrasound PNGs are often stored as RGB with equal channels; the bundles' networks take one
    channel (``in_channels`` 1). One-channel input passes through unchanged.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            image = out[key]
            if image.shape[0] == 4:  # RGBA: drop alpha
                image = image[:3]
            if image.shape[0] > 1:
                image = image.mean(dim=0, keepdim=True) if isinstance(image, torch.Tensor) else \
                    np.mean(image, axis=0, keepdims=True)
            out[key] = image
        return out


def domain_prompt_items(items: Sequence[dict[str, Any]], domain: str | None = None) -> list[dict[str, Any]]:
    """Items whose prompt names the target domain, ``"UDIAT: breast ultrasound image of ..."`` (the
    ``domain`` prefix of :func:`busmonai.clinical.prompts.build_prompt`), so an adapter can learn the
    new scanner under its own name; ``domain=None`` returns the items unchanged.

    Args:
        items: datalist items with a ``prompt`` (built by ``busmonai prepare`` from class,
            echogenicity and boundary).
        domain: the domain name (the bundle's ``prompt_domain``), or None.
    """
    if not domain:
        return [dict(item) for item in items]
    prefix = f"{domain}: "
    return [{**item, "prompt": item["prompt"] if item["prompt"].startswith(prefix) else prefix + item["prompt"]}
            for item in items]


def datalist_domain(datalist: str | Path) -> str:
    """The domain name of a prepared datalist: its items' ``domain`` field, else its ``name``.

    Raises:
        BusmonaiInputError: neither is present (pass ``--prompt_domain NAME``).
    """
    data = load_datalist(Path(datalist))
    for split in ("training", "validation", "test"):
        for item in data.get(split) or []:
            if item.get("domain"):
                return str(item["domain"])
    if data.get("name"):
        return str(data["name"])
    raise BusmonaiInputError(f"{datalist}: no 'domain' or 'name' to put in the prompt; pass --prompt_domain NAME")
