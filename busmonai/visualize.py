"""PNG sheets where a person looks: grids of images or masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from busmonai.data.imageio import save_png


def grid(images: Sequence[np.ndarray], ncols: int | None = None, pad: int = 2, fill: int = 0) -> np.ndarray:
    """Tile equally-sized uint8 (H, W) images row by row into one (rows*H, ncols*W) sheet.

    Args:
        images: the tiles, all of one shape.
        ncols: tiles per row (default: ceil(sqrt(n))).
        pad: pixels between tiles.
        fill: grey value of the padding and of empty cells.
    """
    if not images:
        raise ValueError("grid needs at least one image")
    height, width = images[0].shape[:2]
    if any(im.shape[:2] != (height, width) for im in images):
        raise ValueError("grid tiles must all have the same size")
    ncols = ncols or int(np.ceil(np.sqrt(len(images))))
    nrows = int(np.ceil(len(images) / ncols))
    sheet = np.full(
        (nrows * height + (nrows - 1) * pad, ncols * width + (ncols - 1) * pad), fill, dtype=np.uint8
    )
    for index, image in enumerate(images):
        row, col = divmod(index, ncols)
        y, x = row * (height + pad), col * (width + pad)
        sheet[y : y + height, x : x + width] = image
    return sheet


def save_grid(images: Sequence[np.ndarray], path: Path, ncols: int | None = None, pad: int = 2, fill: int = 0) -> Path:
    """Write :func:`grid` of ``images`` to ``path`` as a PNG and return the path."""
    save_png(grid(images, ncols=ncols, pad=pad, fill=fill), Path(path))
    return Path(path)
