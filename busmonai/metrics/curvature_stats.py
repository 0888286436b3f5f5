"""Boundary-curvature statistics of a set of masks, per class (``busmonai evaluate curvature``).

Reuses the measure of :mod:`busmonai.clinical.curvature` (the one of the SCMG curvature loss)
through :func:`busmonai.clinical.curvature.curvature_statistics`. Real BUSI masks read benign
0.0625 +- 0.0258, malignant 0.1201 +- 0.0278: a generator's masks should keep that order.

Sources:

- **a datalist**: the ``mask`` of every benign / malignant / tumor item (all splits, or
  ``split``), grouped by the item's class;
- **a folder** of mask images (recursive ``.png`` / ``.jpg``, hidden files and ``sheet*.png``
  skipped): the class of a file is the first ``_``-separated part of its name when that is
  ``benign`` / ``malignant`` / ``normal`` (the naming of ``busmonai prepare`` and
  ``busmonai masks``), else unknown; ``normal`` masks are skipped.

An empty mask of a tumor (or unknown-class) file is an error naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busmonai.clinical.curvature import curvature_statistics
from busmonai.clinical.classes import ALL_CLASSES, LESION_CLASSES, TUMOR_CLASSES
from busmonai.errors import BusmonaiInputError
from busmonai.metrics.sources import datalist_items, is_datalist, item_class, load_mask_array, walk_image_files



def _folder_masks(folder: Path) -> list[tuple[Path, str | None]]:
    found = []
    for path, _ in walk_image_files(folder, "masks"):
        prefix = path.stem.split("_")[0].lower()
        found.append((path, prefix if prefix in ALL_CLASSES else None))
    return found


def mask_files(source: Path | str, split: str | None = None) -> list[tuple[Path, str | None]]:
    """``(mask path, class or None)`` for the tumor masks of a datalist or folder (module docstring)."""
    source = Path(source)
    if is_datalist(source):
        items = datalist_items(source, split, classes=LESION_CLASSES, keys=("mask",))
        return [(Path(i["mask"]), item_class(i)) for i in items]
    if split is not None:
        raise BusmonaiInputError(f"--split {split} applies to datalists, but {source} is a folder; drop --split")
    return [(p, c) for p, c in _folder_masks(source) if c != "normal"]


def mask_curvature_statistics(source: Path | str, split: str | None = None,
                              classes: Sequence[str] = TUMOR_CLASSES) -> dict[str, Any]:
    """Mean / std / n of the boundary curvature of every mask, and per class when classes are known.

    Returns:
        ``{"all": {"mean", "std", "n"}, "benign": {...}, "malignant": {...}}`` (a class key only
        when that class has masks).

    Raises:
        BusmonaiInputError: no masks, an unreadable file, or an empty tumor mask.
    """
    files = mask_files(source, split)
    if not files:
        raise BusmonaiInputError(f"{source}: no mask images found; pass a folder of masks or a datalist")
    masks: list[np.ndarray] = []
    for path, _ in files:
        mask = load_mask_array(path)
        if not mask.any():
            raise BusmonaiInputError(f"{path}: empty mask of a tumor image; remove it or name it normal_*.png")
        masks.append(mask)
    result: dict[str, Any] = {"all": curvature_statistics(masks)}
    for cls in classes:
        chosen = [m for m, (_, c) in zip(masks, files) if c == cls]
        if chosen:
            result[cls] = curvature_statistics(chosen)
    return result
