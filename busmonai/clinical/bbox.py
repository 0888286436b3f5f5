"""Bounding rectangles of lesion masks, and the rectangle maps that condition mask generators.

Convention (used everywhere in busmonai, including the datalist's ``"bbox"`` key)::

    bbox = (x0, y0, x1, y1)     x = column index, y = row index, integers
    x0 <= x < x1, y0 <= y < y1  (x1, y1 are exclusive), so width = x1 - x0, height = y1 - y0

A pixel ``mask[y, x]`` is inside the box exactly when ``x0 <= x < x1`` and ``y0 <= y < y1``; a box
that covers a whole ``H x W`` image is ``(0, 0, W, H)``. In continuous coordinates where pixel
``(y, x)`` covers ``[x, x + 1) x [y, y + 1)``, the box is the rectangle ``[x0, x1) x [y0, y1)``.

The SCMG generator (Medical Image Analysis 2025, "Breast Ultrasound Tumor Generation via Mask
Generator and Text-Guided Network") is conditioned on a binary bounding-rectangle map ``s``
(ones inside the box) through SPADE normalisation; :func:`bbox_to_map` and
:func:`bboxes_to_maps` make those maps. The elastic-ellipse masks of the CP paper (MICCAI 2025,
"Clinical Prior-Guided Tumor Generation for Breast Ultrasound with Cross Domain Adaptation")
can be constrained to such a box (:mod:`busmonai.clinical.ellipse`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from busmonai.errors import BusmonaiInputError

BBox = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)``: column/row of the top-left pixel, exclusive right/bottom edges."""


def mask_bbox(mask: np.ndarray, threshold: float = 0.0) -> BBox:
    """Bounding box of the region where ``mask > threshold``.

    Args:
        mask: ``H x W`` array (bool, integer or float).
        threshold: a pixel belongs to the region when its value is strictly above this
            (0 for binary masks; 0.5 for soft masks in ``[0, 1]``).

    Returns:
        ``(x0, y0, x1, y1)`` with exclusive ``x1``, ``y1`` (see the module docstring).

    Raises:
        BusmonaiInputError: the mask is not 2-D or has no pixel above ``threshold``.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise BusmonaiInputError(f"mask_bbox expects a 2-D H x W mask, got shape {arr.shape}")
    region = arr > threshold
    rows = np.flatnonzero(region.any(axis=1))
    if rows.size == 0:
        raise BusmonaiInputError(
            f"mask_bbox: empty mask (no pixel above {threshold}) of shape {arr.shape}; "
            "an empty mask has no bounding box"
        )
    cols = np.flatnonzero(region.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def validate_bbox(bbox: Sequence[float], height: int, width: int) -> BBox:
    """Check that ``bbox`` is a non-empty integer box inside an ``height x width`` image.

    Args:
        bbox: ``(x0, y0, x1, y1)``, exclusive ``x1``, ``y1``. Integral floats are accepted.
        height: image height (rows).
        width: image width (columns).

    Returns:
        The box as a tuple of four Python ints.

    Raises:
        BusmonaiInputError: not four integers, zero or negative width or height, or not inside
            ``[0, width] x [0, height]``.
    """
    values = list(bbox) if not isinstance(bbox, (str, bytes)) else []
    if len(values) != 4:
        raise BusmonaiInputError(f"bbox must be four integers (x0, y0, x1, y1), got {bbox!r}")
    ints: list[int] = []
    for v in values:
        try:
            fv = float(v)
        except (TypeError, ValueError):
            raise BusmonaiInputError(f"bbox must be four integers (x0, y0, x1, y1), got {bbox!r}") from None
        if not np.isfinite(fv) or fv != int(fv):
            raise BusmonaiInputError(f"bbox must be four integers (x0, y0, x1, y1), got {bbox!r}")
        ints.append(int(fv))
    x0, y0, x1, y1 = ints
    if x1 <= x0 or y1 <= y0:
        raise BusmonaiInputError(
            f"bbox {tuple(ints)} has zero or negative area (width x1 - x0 = {x1 - x0}, "
            f"height y1 - y0 = {y1 - y0}); x1 and y1 are exclusive and must exceed x0 and y0"
        )
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise BusmonaiInputError(
            f"bbox {tuple(ints)} lies outside the {height} x {width} (H x W) image; "
            f"need 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}"
        )
    return x0, y0, x1, y1


def bbox_to_map(bbox: Sequence[int], height: int, width: int) -> np.ndarray:
    """Rectangle map: float32 ``height x width`` array, 1 inside ``bbox``, 0 outside.

    Raises:
        BusmonaiInputError: invalid box (see :func:`validate_bbox`).
    """
    x0, y0, x1, y1 = validate_bbox(bbox, height, width)
    out = np.zeros((height, width), dtype=np.float32)
    out[y0:y1, x0:x1] = 1.0
    return out


def bboxes_to_maps(bboxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Batch of rectangle maps for SPADE conditioning.

    Args:
        bboxes: ``(B, 4)`` tensor of ``(x0, y0, x1, y1)`` boxes (integer or float dtype; float
            boxes are compared against integer pixel indices, so ``x0 <= x < x1``).
        height: output height.
        width: output width.

    Returns:
        ``(B, 1, height, width)`` float32 tensor on ``bboxes``'s device, 1 inside each box.

    Raises:
        BusmonaiInputError: ``bboxes`` is not ``(B, 4)``.
    """
    if bboxes.ndim != 2 or bboxes.shape[1] != 4:
        raise BusmonaiInputError(f"bboxes_to_maps expects a (B, 4) tensor of boxes, got shape {tuple(bboxes.shape)}")
    b = bboxes.to(torch.float32)
    xs = torch.arange(width, device=b.device, dtype=torch.float32).view(1, 1, width)
    ys = torch.arange(height, device=b.device, dtype=torch.float32).view(1, height, 1)
    x0, y0, x1, y1 = (b[:, i].view(-1, 1, 1) for i in range(4))
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return inside.to(torch.float32).unsqueeze(1)


def bbox_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (exclusive ends).

    Returns 0.0 for disjoint boxes (and when both have zero area).
    """
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = max(0.0, ax1 - ax0) * max(0.0, ay1 - ay0) + max(0.0, bx1 - bx0) * max(0.0, by1 - by0) - inter
    return inter / union if union > 0 else 0.0
