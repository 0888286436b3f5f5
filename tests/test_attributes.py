from __future__ import annotations

import numpy as np
import pytest

from busmonai.clinical.attributes import AttributeRule, AttributeScores, attribute_scores


def _disc(size: int = 64, radius: int = 14) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2


def test_heterogeneous_interior_scores_higher() -> None:
    rng = np.random.default_rng(0)
    mask = _disc()
    background = 120 + 10 * rng.standard_normal(mask.shape)
    flat = np.where(mask, 40.0, background)
    blotchy = np.where(mask, 40.0 + 35 * (rng.random(mask.shape) > 0.5) * np.sign(np.sin(np.arange(64) / 3))[None], background)
    assert attribute_scores(blotchy, mask).heterogeneity > attribute_scores(flat, mask).heterogeneity


def test_sharp_edge_scores_higher_contrast_than_blurred() -> None:
    from scipy import ndimage

    mask = _disc()
    sharp = np.where(mask, 30.0, 150.0)
    blurred = ndimage.gaussian_filter(sharp, 4.0)
    assert attribute_scores(sharp, mask).edge_contrast > attribute_scores(blurred, mask).edge_contrast


def test_scores_gain_invariant() -> None:
    rng = np.random.default_rng(1)
    mask = _disc()
    image = np.where(mask, 40.0, 120.0) + 8 * rng.standard_normal(mask.shape)
    a, b = attribute_scores(image, mask), attribute_scores(2.0 * image, mask)
    assert a.heterogeneity == pytest.approx(b.heterogeneity, rel=1e-4)
    assert a.edge_contrast == pytest.approx(b.edge_contrast, rel=1e-4)


def test_rule_fits_medians_and_classifies() -> None:
    scores = [AttributeScores(h, c) for h, c in [(0.1, 1.0), (0.3, 2.0), (0.5, 3.0)]]
    rule = AttributeRule.fit(scores)
    assert rule.heterogeneity_threshold == 0.3 and rule.edge_contrast_threshold == 2.0
    assert rule.classify(AttributeScores(0.2, 2.5)) == {"echogenicity": "homogeneous", "boundary": "clear"}
    assert rule.classify(AttributeScores(0.4, 1.5)) == {"echogenicity": "heterogeneous", "boundary": "unclear"}
    with pytest.raises(ValueError, match="no tumor image"):
        AttributeRule.fit([])


def test_empty_or_mismatched_mask_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        attribute_scores(np.zeros((8, 8)), np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="shape"):
        attribute_scores(np.zeros((8, 8)), np.ones((4, 4), bool))
