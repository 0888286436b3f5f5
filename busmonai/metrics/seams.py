"""How visible the seam of a lesion pasted into a real image is.

Real-background synthesis (``busmonai generate --background``) keeps the real image outside a
region around the new mask and synthesises inside it. Where the two meet, a naive paste leaves an
edge that the real image does not have. The measure here is the mean absolute intensity gradient
on the region's boundary ring (the pixels inside the region that touch the outside) in the
composite, divided by the same ring's mean gradient in the real image: 1 when the seam is as smooth
as the tissue it replaced, above 1 for a visible edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from busmonai.errors import BusmonaiInputError


def _gradient(image: np.ndarray) -> np.ndarray:
    """Magnitude of the central-difference gradient (float, same shape)."""
    gy, gx = np.gradient(image.astype(np.float64))
    return np.hypot(gx, gy)


def boundary_ring(region: np.ndarray) -> np.ndarray:
    """The pixels of ``region`` (bool) with a 4-neighbour outside it."""
    region = np.asarray(region, dtype=bool)
    return region & ~ndimage.binary_erosion(region, border_value=1)


def seam_ratio(composite: np.ndarray, background: np.ndarray, region: np.ndarray) -> float:
    """Mean gradient of ``composite`` on ``region``'s boundary ring over that of ``background``.

    Args:
        composite: the generated image (H, W), any intensity scale shared with ``background``.
        background: the real image it was composed into.
        region: (H, W) bool, the synthesised region.

    Raises:
        BusmonaiInputError: shapes differ, or the region has no boundary inside the image.
    """
    composite, background, region = np.asarray(composite), np.asarray(background), np.asarray(region, dtype=bool)
    if composite.shape != background.shape or region.shape != composite.shape:
        raise BusmonaiInputError(f"seam_ratio: shapes differ ({composite.shape}, {background.shape}, {region.shape})")
    ring = boundary_ring(region)
    if not ring.any():
        raise BusmonaiInputError("seam_ratio: the region has no boundary (empty or the whole image)")
    real = float(_gradient(background)[ring].mean())
    return float(_gradient(composite)[ring].mean()) / max(real, 1e-6)


def seam_ratios(composites: Sequence[np.ndarray], backgrounds: Sequence[np.ndarray],
                regions: Sequence[np.ndarray]) -> dict[str, float]:
    """``{"mean", "median", "n"}`` of :func:`seam_ratio` over a set."""
    values = [seam_ratio(c, b, r) for c, b, r in zip(composites, backgrounds, regions)]
    if not values:
        raise BusmonaiInputError("seam_ratios: no images")
    return {"mean": float(np.mean(values)), "median": float(np.median(values)), "n": len(values)}
