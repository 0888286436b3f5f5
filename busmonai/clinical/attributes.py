"""BI-RADS echogenicity and boundary attributes derived from an image and its lesion mask.

Public BUS datasets carry no echogenicity or boundary labels (BrEaST excepted), so the prompts of
CP (MICCAI 2025) and the SCMG paper (Medical Image Analysis 2025) need them derived from pixels
(docs/method.md section 3). The rule, applied to the prepared (resized, single-channel) image:

1. The image is smoothed with a Gaussian of ``SMOOTH_SIGMA`` px to damp single-pixel speckle and
   normalised by its own standard deviation ``s`` over the whole image (gain-free).
2. **Heterogeneity** ``h = std(I inside the lesion core) / s``: internal echo variation relative
   to the image's. The core is the mask eroded by ``CORE_EROSION`` px, so a blurred rim (an
   anechoic cyst's dark-to-bright edge) does not count as internal variation. Lesions with ``h > heterogeneity_threshold`` are *heterogeneous*, others
   *homogeneous*.
3. **Edge contrast** ``c = |mean(I in a band of RING px outside) - mean(I in a band of RING px
   inside)| / s``: how strongly the lesion stands out across its edge. Lesions with
   ``c >= edge_contrast_threshold`` have a *clear* boundary, others *unclear*. A blurred,
   infiltrating or echogenic-halo margin lowers the contrast across a thin band.
4. Both thresholds are the medians of the scores over the tumor images of the **training
   split** only (so the rule is fitted without looking at validation or test data) and are
   stored in the datalist under ``attribute_rule`` with the scores of every item, so the labels
   are reproducible and can be re-thresholded.

Descriptors published with a dataset (BrEaST's BI-RADS echogenicity and margin) override the
derived ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

SMOOTH_SIGMA = 1.0
"""Gaussian smoothing (px) before measuring, to damp speckle."""
RING = 3
"""Width (px) of the bands inside and outside the lesion edge used for the edge contrast."""
CORE_EROSION = 2
"""Erosion (px) of the mask before measuring heterogeneity (whole mask if nothing is left)."""
_EPS = 1e-6


@dataclass(frozen=True)
class AttributeScores:
    """Scores of one lesion: ``heterogeneity`` and ``edge_contrast`` (see module docstring)."""

    heterogeneity: float
    edge_contrast: float


@dataclass(frozen=True)
class AttributeRule:
    """The fitted thresholds; stored in the datalist as ``attribute_rule``."""

    heterogeneity_threshold: float
    edge_contrast_threshold: float
    smooth_sigma: float = SMOOTH_SIGMA
    ring: int = RING
    fitted_on: str = "training"

    def classify(self, scores: AttributeScores) -> dict[str, str]:
        """Map scores to ``{"echogenicity": ..., "boundary": ...}``."""
        return {
            "echogenicity": "heterogeneous" if scores.heterogeneity > self.heterogeneity_threshold else "homogeneous",
            "boundary": "clear" if scores.edge_contrast >= self.edge_contrast_threshold else "unclear",
        }

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form, thresholds rounded to 6 decimals for stable bytes."""
        data = asdict(self)
        data["heterogeneity_threshold"] = round(self.heterogeneity_threshold, 6)
        data["edge_contrast_threshold"] = round(self.edge_contrast_threshold, 6)
        return data

    @classmethod
    def fit(cls, scores: Sequence[AttributeScores]) -> AttributeRule:
        """Fit the thresholds as the medians of training-split scores.

        Raises:
            ValueError: no scores (no tumor image in the training split).
        """
        if not scores:
            raise ValueError("cannot fit the attribute rule: the training split holds no tumor image")
        return cls(
            heterogeneity_threshold=float(np.median([s.heterogeneity for s in scores])),
            edge_contrast_threshold=float(np.median([s.edge_contrast for s in scores])),
        )


def attribute_scores(image: np.ndarray, mask: np.ndarray) -> AttributeScores:
    """Measure heterogeneity and edge contrast of the lesion ``mask`` in ``image``.

    Args:
        image: (H, W) grey image, any intensity scale.
        mask: (H, W) boolean lesion mask, not empty.

    Returns:
        The scores, rounded to 6 decimals so that datalists are byte-stable.

    Raises:
        ValueError: the mask is empty or of another shape than the image.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    if not mask.any():
        raise ValueError("cannot measure attributes of an empty mask")
    smooth = ndimage.gaussian_filter(np.asarray(image, dtype=np.float64), SMOOTH_SIGMA)
    scale = float(smooth.std()) + _EPS
    inner = mask & ~ndimage.binary_erosion(mask, iterations=RING)
    outer = ndimage.binary_dilation(mask, iterations=RING) & ~mask
    if not outer.any():  # lesion fills the image: no outside to compare with
        outer = ~inner if (~inner).any() else inner
    core = ndimage.binary_erosion(mask, iterations=CORE_EROSION)
    if not core.any():
        core = mask
    heterogeneity = float(smooth[core].std()) / scale
    edge_contrast = abs(float(smooth[outer].mean()) - float(smooth[inner].mean())) / scale
    return AttributeScores(round(heterogeneity, 6), round(edge_contrast, 6))
