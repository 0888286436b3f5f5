"""Where a new lesion may go in a real B-mode image: the tissue region of the real lesions.

In a breast-ultrasound image the top rows are skin and gel (no lesion lies there) and the bottom
rows lie below the pectoral muscle and the chest wall (no breast lesion either); the columns near
the edges are often the fan's dark margins. The rule, from the real training lesions' positions:
the **tissue region** is the rectangle from the 5th percentile of the lesions' top edges to the 95th
percentile of their bottom edges, and from the 5th percentile of their left edges to the 95th of
their right edges (:class:`TissueRegion`). A new lesion is moved, keeping its shape, to a seeded
uniform position whose bounding box lies inside that rectangle (:meth:`TissueRegion.place`); a
lesion larger than the rectangle (the largest real ones: the edges are percentiles) is not drawn
into real backgrounds (:meth:`TissueRegion.fits`). On
the 64 px BUSI training masks (414 tumors) it spans rows 3-49 and columns 1-62 (69 % of the
image): the deepest 15 rows are excluded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from busmonai.clinical.bbox import mask_bbox
from busmonai.errors import BusmonaiInputError

__all__ = ["TissueRegion"]

EDGE_PERCENTILES: tuple[float, float] = (5.0, 95.0)
"""Percentiles of the real lesions' edges that bound the tissue region."""


@dataclass(frozen=True)
class TissueRegion:
    """A rectangle ``[y0, y1) x [x0, x1)`` of an ``image_size`` image where lesions may lie."""

    y0: int
    y1: int
    x0: int
    x1: int
    image_size: int

    @classmethod
    def fit(cls, masks: Sequence[np.ndarray]) -> TissueRegion:
        """The region of the real lesion masks (all of one square size).

        Raises:
            BusmonaiInputError: no non-empty mask, or masks of different sizes.
        """
        boxes = [mask_bbox(m > 0) for m in masks if np.asarray(m).any()]
        if not boxes:
            raise BusmonaiInputError("no lesion mask to learn the tissue region from; give tumor images with masks")
        sizes = {np.asarray(m).shape for m in masks}
        if len(sizes) != 1 or len(next(iter(sizes))) != 2 or len(set(next(iter(sizes)))) != 1:
            raise BusmonaiInputError(f"lesion masks of one square size are needed, got {sorted(sizes)}")
        size = next(iter(sizes))[0]
        b = np.asarray(boxes, dtype=np.float64)  # x0, y0, x1, y1 (exclusive ends)
        low, high = EDGE_PERCENTILES
        y0, x0 = int(np.floor(np.percentile(b[:, 1], low))), int(np.floor(np.percentile(b[:, 0], low)))
        y1, x1 = int(np.ceil(np.percentile(b[:, 3], high))), int(np.ceil(np.percentile(b[:, 2], high)))
        return cls(max(0, y0), min(size, y1), max(0, x0), min(size, x1), size)

    def place(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``mask`` moved, shape unchanged, to a uniform position whose box lies in the region.

        Raises:
            BusmonaiInputError: an empty mask, one of another size, or one too large for the region.
        """
        mask = np.asarray(mask)
        if mask.shape != (self.image_size, self.image_size):
            raise BusmonaiInputError(f"a {mask.shape} mask for a {self.image_size} px tissue region")
        if not mask.any():
            raise BusmonaiInputError("an empty mask has no lesion to place")
        x0, y0, x1, y1 = mask_bbox(mask > 0)
        h, w = y1 - y0, x1 - x0
        if h > self.y1 - self.y0 or w > self.x1 - self.x0:
            raise BusmonaiInputError(
                f"a lesion of {w}x{h} px does not fit inside the tissue region (rows {self.y0}-{self.y1}, columns "
                f"{self.x0}-{self.x1}) of a {self.image_size} px image; use smaller masks")
        top = int(rng.integers(self.y0, self.y1 - h + 1))
        left = int(rng.integers(self.x0, self.x1 - w + 1))
        placed = np.zeros_like(mask)
        placed[top : top + h, left : left + w] = mask[y0:y1, x0:x1]
        return placed

    def fits(self, mask: np.ndarray) -> bool:
        """True when the mask's lesion is small enough to be placed inside the region (:meth:`place`)."""
        x0, y0, x1, y1 = mask_bbox(np.asarray(mask) > 0)
        return y1 - y0 <= self.y1 - self.y0 and x1 - x0 <= self.x1 - self.x0

    def contains(self, mask: np.ndarray) -> bool:
        """True when the mask's bounding box lies inside the region."""
        x0, y0, x1, y1 = mask_bbox(np.asarray(mask) > 0)
        return self.y0 <= y0 and y1 <= self.y1 and self.x0 <= x0 and x1 <= self.x1
