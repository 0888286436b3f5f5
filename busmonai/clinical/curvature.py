"""Mean absolute boundary curvature of lesion masks: one scale-free measure, numpy and torch.

The SCMG paper (Medical Image Analysis 2025, "Breast Ultrasound Tumor Generation via Mask
Generator and Text-Guided Network") characterises a mask ``M`` by the mean, over its boundary
pixels, of the absolute curvature of its level lines,

    kappa = |M_xx M_y^2 - 2 M_x M_y M_xy + M_yy M_x^2| / (M_x^2 + M_y^2 + eps)^(3/2),

reports malignant > benign on real masks, and trains its mask generator with
``L_cur = |kappa_gen - kappa_target|``. The CP paper (MICCAI 2025, "Clinical Prior-Guided Tumor
Generation for Breast Ultrasound with Cross Domain Adaptation") uses the same notion of
irregularity for its elastic-ellipse masks. Applied literally to raw binary masks the formula
measures the pixel staircase and the lesion size rather than the shape (docs/method.md section 4:
wrong class order on BUSI). This module defines the one measure busmonai uses for the loss and
for evaluation, in two implementations that agree to about 1e-6 relative (float32 torch
against float64 numpy): :func:`boundary_curvature` (numpy) and
:func:`boundary_curvature_torch` (differentiable).

The measure, step by step (the same kernels and matrices in both forms):

1. **Region and box.** The lesion is ``M > 0.5`` (soft masks in ``[0, 1]``; binary and 0/255
   masks are binarised at half their maximum in the numpy form). Its bounding box is computed
   without gradient (:func:`busmonai.clinical.bbox.mask_bbox`).
2. **Canonical crop (scale and aspect).** A square window centred on the box, of side
   ``max(box width, box height) * (1 + 2 * CANONICAL_MARGIN)``, is resampled to
   ``CANONICAL_SIZE x CANONICAL_SIZE`` pixels (:func:`canonicalize_mask`). Padding the box to a
   square first keeps the aspect ratio (an ellipse stays the same ellipse), and the fixed output
   size makes the measure scale-free: a lesion always spans ``CANONICAL_SIZE / (1 + 2 *
   CANONICAL_MARGIN)`` = 48 canonical pixels along its longer side. Resampling is linear and
   separable, written as two matrices: ``crop = R_y @ M @ R_x^T``. The matrices hold a
   triangle (linear-interpolation) filter whose width grows with the downsampling factor
   (anti-aliased, like PIL's bilinear resize), and zeros for window parts outside the image.
   They depend only on the box, so gradients flow to the mask values through a matrix product.
3. **Anti-aliasing at the source resolution.** Upsampling a small binary mask magnifies its
   pixel staircase; the source mask is therefore blurred with a Gaussian of
   ``SOURCE_SIGMA = 1`` source pixel first, folded into ``R_y`` and ``R_x`` (the filter is
   the triangle convolved with that Gaussian, in closed form), so steps one source pixel high
   are ironed out at every lesion size, while lobes spanning many source pixels are kept.
4. **Smoothing.** The crop is blurred with a Gaussian of ``SMOOTH_SIGMA = 1.5`` canonical
   pixels (truncated at ``GAUSS_TRUNCATE`` sigmas, normalised), zero padding, separably.
   With 1 pixel, central differences on the canvas are too coarse: even an anti-aliased disc
   of radius 100 px reads 11 % above its exact curvature, and binary discs of radius 8, 16 and
   40 px spread over 17 %; with 1.5 px (and step 3) they agree within 6 % of the exact value,
   and the BUSI classes still separate (below).
5. **Derivatives.** Central differences with zero padding: first derivative kernel
   ``[-1/2, 0, 1/2]``, second ``[1, -2, 1]``, mixed = first along x then first along y. The
   pointwise curvature is the formula above with ``eps = CURVATURE_EPS = 1e-8`` (the papers'
   value), in 1 / canonical pixel.
6. **Boundary pixels: a soft, differentiable weighting.** Instead of a hard boundary set, every
   pixel gets the weight ``w = 4 S (1 - S) * sqrt(S_x^2 + S_y^2 + eps)`` where ``S`` is the
   smoothed crop, and ``kappa = sum(w * curvature) / sum(w)``. By the co-area formula this is
   the length-weighted mean absolute curvature of the level lines of ``S``, averaged over the
   levels ``t`` with weight ``4 t (1 - t)``, which peaks at the boundary level ``t = 1/2`` and
   vanishes at 0 and 1. The ``4 S (1 - S)`` factor stops faint background noise of a
   generator's soft output (whose level lines are short, random and highly curved) from
   entering the mean, and the product ``w * curvature = 4 S (1 - S) |num| / (g^2 + eps)`` is
   a smooth, bounded function of the derivatives: no hard selection, no division by a
   vanishing gradient, finite gradients everywhere.

Values: a disc gives about ``1 / radius`` in canonical pixels, 0.042-0.044 (exact
``2 / 48 = 0.0417``) at any radius from 8 px up; an ellipse of axis ratio 2 about 0.055; the
lobulated outline ``r = R (1 + 0.2 cos 6 theta)`` about 0.136; spiculated outlines 0.18-0.24.
On the 518 BUSI tumor masks in ``shared/data`` (``scripts/curvature_stats.py``): benign
0.0625 +- 0.0258 (n = 350), malignant 0.1201 +- 0.0278 (n = 168), a standardised difference of
2.2 (the literal 64-px recipe of docs/method.md gives 0.099 +- 0.022 vs 0.151 +- 0.036, 1.7). With
the masks first resized to 64 px (nearest): 0.0621 vs 0.0974 -- smooth outlines read the same,
fine spiculation is partly lost with the pixels that carried it. The absolute values of the
papers (0.68 / 0.79) depend on a discretisation they do not give; only the ordering and the
spread are comparable.

Empty masks: the numpy form raises :class:`busmonai.errors.BusmonaiInputError`; the torch form
returns 0 for them (attached to the graph, zero gradient) so that training never crashes on a
generator output with no pixel above 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from busmonai.clinical.bbox import mask_bbox
from busmonai.errors import BusmonaiInputError

CANONICAL_SIZE = 64
"""Side, in pixels, of the square canvas every mask is resampled to before the derivatives."""
CANONICAL_MARGIN = 1.0 / 6.0
"""Margin on each side of the square window, as a fraction of the box's longer side (the lesion
spans ``CANONICAL_SIZE / (1 + 2 * CANONICAL_MARGIN)`` = 48 canonical pixels)."""
SOURCE_SIGMA = 1.0
"""Gaussian anti-aliasing applied at the source resolution, in source pixels (step 3)."""
SMOOTH_SIGMA = 1.5
"""Gaussian smoothing of the canonical crop, in canonical pixels (step 4)."""
GAUSS_TRUNCATE = 4.0
"""The smoothing kernel is truncated at this many sigmas (radius ``ceil(4 * sigma)``)."""
CURVATURE_EPS = 1e-8
"""The ``eps`` of the papers' curvature formula and of the gradient-magnitude weight."""
REGION_THRESHOLD = 0.5
"""A (soft) mask pixel belongs to the lesion when its value is above this."""

_D1 = np.array([-0.5, 0.0, 0.5])
"""Central first-difference kernel (correlation: ``out[i] = (x[i+1] - x[i-1]) / 2``)."""
_D2 = np.array([1.0, -2.0, 1.0])
"""Central second-difference kernel."""


def gaussian_kernel(sigma: float = SMOOTH_SIGMA, truncate: float = GAUSS_TRUNCATE) -> np.ndarray:
    """Normalised 1-D Gaussian kernel of radius ``ceil(truncate * sigma)`` (float64)."""
    radius = max(1, int(math.ceil(truncate * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _canonical_window(bbox: tuple[int, int, int, int], margin: float) -> tuple[float, float, float]:
    """Square window ``(left, top, side)`` in continuous source coordinates for a box."""
    x0, y0, x1, y1 = bbox
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    return cx - 0.5 * side, cy - 0.5 * side, side


def resampling_matrix(
    start: float, length: float, n_in: int, n_out: int, source_sigma: float = SOURCE_SIGMA
) -> np.ndarray:
    """Linear resampling matrix ``(n_out, n_in)`` from the interval ``[start, start + length)``.

    Output sample ``j`` sits at continuous source coordinate ``start + (j + 1/2) * length / n_out``
    (pixel ``i`` of the source covers ``[i, i + 1)``, centre ``i + 1/2``). Its weights are a
    triangle filter of half-width ``max(1, length / n_out)`` source pixels (linear interpolation
    when upsampling, anti-aliased averaging when downsampling), convolved with a Gaussian of
    ``source_sigma`` source pixels, and normalised over the whole integer lattice: source pixels
    outside ``[0, n_in)`` count as zeros (they are simply dropped), so the window may extend
    beyond the image.

    Args:
        start: left (top) edge of the window, source pixels.
        length: window length, source pixels.
        n_in: number of source pixels along this axis.
        n_out: number of output pixels.
        source_sigma: Gaussian anti-aliasing at the source resolution (0 to disable).

    Returns:
        float64 array of shape ``(n_out, n_in)``.
    """
    step = length / n_out
    half = max(1.0, step)
    pos = start + (np.arange(n_out) + 0.5) * step - 0.5  # in source pixel-index coordinates
    # Discrete filter on a fine grid: triangle (x) Gaussian, evaluated at integer offsets.
    reach = half + (GAUSS_TRUNCATE * source_sigma if source_sigma > 0 else 0.0)
    lo = np.floor(pos - reach).astype(np.int64)
    width = int(np.ceil(2 * reach)) + 2
    idx = lo[:, None] + np.arange(width)[None, :]  # (n_out, width) candidate source indices
    d = idx - pos[:, None]
    if source_sigma > 0:
        weights = _triangle_gauss(d, half, source_sigma)
    else:
        weights = np.clip(1.0 - np.abs(d) / half, 0.0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    out = np.zeros((n_out, n_in), dtype=np.float64)
    valid = (idx >= 0) & (idx < n_in)
    rows = np.broadcast_to(np.arange(n_out)[:, None], idx.shape)
    np.add.at(out, (rows[valid], idx[valid]), weights[valid])
    return out


def _triangle_gauss(d: np.ndarray, half: float, sigma: float) -> np.ndarray:
    """Triangle of half-width ``half`` convolved with a Gaussian of ``sigma``, evaluated at ``d``.

    Closed form via the normal CDF ``Phi`` and PDF ``phi``: for ``T(x) = max(0, 1 - |x| / h)``,
    ``(T * G)(d) = [r(d + h) - 2 r(d) + r(d - h)] / h`` with ``r(u) = u Phi(u / s) + s phi(u / s)``
    (the Gaussian-smoothed ramp).
    """
    from scipy.special import ndtr

    def ramp(u: np.ndarray) -> np.ndarray:
        z = u / sigma
        return u * ndtr(z) + sigma * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)

    return np.clip((ramp(d + half) - 2.0 * ramp(d) + ramp(d - half)) / half, 0.0, None)


def canonical_matrices(
    bbox: tuple[int, int, int, int],
    height: int,
    width: int,
    size: int = CANONICAL_SIZE,
    margin: float = CANONICAL_MARGIN,
    source_sigma: float = SOURCE_SIGMA,
) -> tuple[np.ndarray, np.ndarray]:
    """The two resampling matrices of the canonical crop: ``crop = R_y @ mask @ R_x.T``.

    Returns:
        ``(R_y, R_x)`` of shapes ``(size, height)`` and ``(size, width)``, float64.
    """
    left, top, side = _canonical_window(bbox, margin)
    ry = resampling_matrix(top, side, height, size, source_sigma)
    rx = resampling_matrix(left, side, width, size, source_sigma)
    return ry, rx


def _as_float_mask(mask: np.ndarray) -> np.ndarray:
    """Numpy mask -> float64 in ``[0, 1]``: bool/integer/float-above-1 masks are binarised."""
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise BusmonaiInputError(f"expected a 2-D H x W mask, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number):
        raise BusmonaiInputError(f"mask must be numeric or bool, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise BusmonaiInputError("mask contains NaN or infinite values")
    if arr.min() < 0:
        raise BusmonaiInputError(f"mask values must be >= 0, got minimum {arr.min()}")
    peak = arr.max()
    if np.issubdtype(np.asarray(mask).dtype, np.integer) or peak > 1.0:
        return (arr > 0.5 * peak).astype(np.float64) if peak > 0 else arr
    return arr


def canonicalize_mask(
    mask: np.ndarray | torch.Tensor,
    size: int = CANONICAL_SIZE,
    margin: float = CANONICAL_MARGIN,
    source_sigma: float = SOURCE_SIGMA,
    threshold: float = REGION_THRESHOLD,
) -> np.ndarray | torch.Tensor:
    """Crop a mask to a square window around its lesion and resample it to ``size x size``.

    Shared step of :func:`boundary_curvature` and :func:`boundary_curvature_torch` (steps 1-3 of
    the module docstring). The box comes from ``mask > threshold`` without gradient; the values
    are resampled linearly, so for a tensor input gradients flow to the mask.

    Args:
        mask: numpy ``H x W`` mask (binary, 0/255 or soft in ``[0, 1]``), or a torch tensor
            ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` of soft masks in ``[0, 1]``.
        size: canonical side in pixels.
        margin: margin per side as a fraction of the box's longer side.
        source_sigma: anti-aliasing Gaussian at the source resolution, source pixels.
        threshold: region threshold for the box.

    Returns:
        numpy: ``size x size`` float64 array. torch: ``(size, size)`` for a 2-D input, else
        ``(B, size, size)``, float32 (float64 for float64 input); empty masks give an all-zero
        canvas.

    Raises:
        BusmonaiInputError: empty numpy mask, or a wrongly shaped input.
    """
    if isinstance(mask, torch.Tensor):
        squeeze = mask.ndim == 2
        batch = _as_batch(mask)
        canvas, _ = _canonicalize_batch(batch, size, margin, source_sigma, threshold)
        return canvas[0] if squeeze else canvas
    arr = _as_float_mask(mask)
    bbox = mask_bbox(arr, threshold)
    ry, rx = canonical_matrices(bbox, arr.shape[0], arr.shape[1], size, margin, source_sigma)
    return ry @ arr @ rx.T


def _correlate_np(img: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    return ndimage.correlate1d(img, kernel, axis=axis, mode="constant", cval=0.0)


def _weighted_curvature(canvas: Any, g: Any, d1: Any, d2: Any, conv: Callable[[Any, Any, int], Any]) -> tuple[Any, Any]:
    """Pixelwise ``(w * |kappa|, w)`` of a canonical canvas, ``w = band * |grad s|`` (the module
    docstring's weighted mean is ``sum(w |kappa|) / sum(w)``); ``conv(x, kernel, axis)`` filters
    one axis, so the same formula serves numpy arrays and torch tensors."""
    s = conv(conv(canvas, g, 0), g, 1)
    sx, sy = conv(s, d1, 1), conv(s, d1, 0)
    sxx, syy, sxy = conv(s, d2, 1), conv(s, d2, 0), conv(sx, d1, 0)
    num = abs(sxx * sy**2 - 2.0 * sx * sy * sxy + syy * sx**2)
    g2 = sx**2 + sy**2 + CURVATURE_EPS
    band = 4.0 * s * (1.0 - s)
    return band * num / g2, band * g2**0.5  # |kappa| = num / g2**1.5


def _curvature_from_canvas_np(canvas: np.ndarray, sigma: float) -> float:
    weighted, weight = _weighted_curvature(canvas, gaussian_kernel(sigma), _D1, _D2, _correlate_np)
    return float(weighted.sum() / weight.sum())


def boundary_curvature(
    mask: np.ndarray,
    size: int = CANONICAL_SIZE,
    margin: float = CANONICAL_MARGIN,
    sigma: float = SMOOTH_SIGMA,
    source_sigma: float = SOURCE_SIGMA,
) -> float:
    """Mean absolute boundary curvature of one mask (numpy form; see the module docstring).

    Args:
        mask: ``H x W`` mask: bool, integer (0/1 or 0/255: binarised at half its maximum), or
            float soft mask in ``[0, 1]`` (floats above 1 are binarised at half the maximum).
        size: canonical side (default :data:`CANONICAL_SIZE`).
        margin: window margin (default :data:`CANONICAL_MARGIN`).
        sigma: canonical smoothing (default :data:`SMOOTH_SIGMA`).
        source_sigma: source-resolution anti-aliasing (default :data:`SOURCE_SIGMA`).

    Returns:
        The weighted mean absolute curvature, in 1 / canonical pixel.

    Raises:
        BusmonaiInputError: empty mask (no pixel above 0.5), wrong shape, NaN or negative values.
    """
    canvas = canonicalize_mask(mask, size, margin, source_sigma)
    return _curvature_from_canvas_np(np.asarray(canvas), sigma)


def _as_batch(masks: torch.Tensor) -> torch.Tensor:
    if masks.ndim == 4:
        if masks.shape[1] != 1:
            raise BusmonaiInputError(f"expected (B, 1, H, W) masks, got shape {tuple(masks.shape)}")
        return masks[:, 0]
    if masks.ndim == 3:
        return masks
    if masks.ndim == 2:
        return masks.unsqueeze(0)
    raise BusmonaiInputError(f"expected masks of shape (B, 1, H, W), (B, H, W) or (H, W), got {tuple(masks.shape)}")


def _canonicalize_batch(
    batch: torch.Tensor, size: int, margin: float, source_sigma: float, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, H, W)`` -> canonical ``(B, size, size)`` and a ``(B,)`` bool of non-empty masks."""
    n, h, w = batch.shape
    if not batch.is_floating_point():  # bool or integer (0/1, 0/255) masks: binarise per mask
        peak = batch.flatten(1).amax(1).view(-1, 1, 1).to(torch.float32)
        batch = (batch.to(torch.float32) > 0.5 * peak).to(torch.float32)
    # float64 stays float64; half precision would lose eps = 1e-8 (0 / 0 in flat regions).
    dtype = torch.promote_types(batch.dtype, torch.float32)
    region = (batch.detach() > threshold).cpu().numpy()
    ry = np.zeros((n, size, h))
    rx = np.zeros((n, size, w))
    present = np.zeros(n, dtype=bool)
    for i in range(n):
        if not region[i].any():
            continue
        present[i] = True
        ry[i], rx[i] = canonical_matrices(mask_bbox(region[i]), h, w, size, margin, source_sigma)
    ry_t = torch.from_numpy(ry).to(device=batch.device, dtype=dtype)
    rx_t = torch.from_numpy(rx).to(device=batch.device, dtype=dtype)
    canvas = ry_t @ batch.to(dtype) @ rx_t.transpose(1, 2)
    return canvas, torch.from_numpy(present).to(batch.device)


def _conv_axis(x: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    """Correlate ``(B, 1, H, W)`` with a 1-D kernel along rows (axis 0) or columns (axis 1)."""
    k = kernel.numel()
    if axis == 1:
        return F.conv2d(x, kernel.view(1, 1, 1, k), padding=(0, k // 2))
    return F.conv2d(x, kernel.view(1, 1, k, 1), padding=(k // 2, 0))


def boundary_curvature_torch(
    masks: torch.Tensor,
    size: int = CANONICAL_SIZE,
    margin: float = CANONICAL_MARGIN,
    sigma: float = SMOOTH_SIGMA,
    source_sigma: float = SOURCE_SIGMA,
    threshold: float = REGION_THRESHOLD,
) -> torch.Tensor:
    """Mean absolute boundary curvature of a batch of soft masks, differentiable.

    Same measure as :func:`boundary_curvature` (same kernels and resampling matrices). The box
    of each mask is found without gradient from ``mask > threshold``; crop, resampling,
    smoothing, derivatives and the weighted mean are differentiable in the mask values, so the
    result can drive the SCMG curvature loss ``L_cur = |kappa_gen - kappa_target|``.

    Args:
        masks: ``(B, 1, H, W)`` or ``(B, H, W)`` soft masks in ``[0, 1]`` (a 2-D ``(H, W)`` mask
            is treated as a batch of one).
        size: canonical side.
        margin: window margin.
        sigma: canonical smoothing.
        source_sigma: source-resolution anti-aliasing.
        threshold: region threshold for the box.

    Returns:
        ``(B,)`` tensor, float64 for float64 masks and float32 otherwise (half-precision inputs
        are computed in float32). Masks with no pixel above ``threshold`` give 0 (zero
        gradient), never an error. Bool or integer masks are binarised at half their maximum.
    """
    batch = _as_batch(masks)
    canvas, present = _canonicalize_batch(batch, size, margin, source_sigma, threshold)
    dtype, device = canvas.dtype, canvas.device

    def kern(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype, device=device)

    weighted, weight = _weighted_curvature(canvas.unsqueeze(1), kern(gaussian_kernel(sigma)), kern(_D1), kern(_D2),
                                           _conv_axis)
    weighted, weight = weighted.flatten(1).sum(1), weight.flatten(1).sum(1)
    safe = torch.where(present, weight, torch.ones_like(weight))
    return torch.where(present, weighted / safe, torch.zeros_like(weighted))


def curvature_statistics(masks: Iterable[np.ndarray], **kwargs: float) -> dict[str, float | int]:
    """Mean, standard deviation (population, ``ddof=0``) and count of :func:`boundary_curvature`.

    Args:
        masks: iterable of ``H x W`` masks; all must be non-empty.
        **kwargs: passed to :func:`boundary_curvature`.

    Returns:
        ``{"mean": float, "std": float, "n": int}``; mean and std are NaN when ``n == 0``.

    Raises:
        BusmonaiInputError: an empty mask.
    """
    values = np.array([boundary_curvature(m, **kwargs) for m in masks], dtype=np.float64)
    if values.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)}
