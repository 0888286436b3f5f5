"""Tests of the elastic-ellipse mask generator and its fitted prior (CP paper, MICCAI 2025)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from busmonai.clinical.bbox import mask_bbox
from busmonai.clinical.curvature import boundary_curvature
from busmonai.clinical.ellipse import (
    SIZE_CLASSES,
    ClassShapePrior,
    EllipseMaskPrior,
    generate_ellipse_mask,
    generate_ellipse_masks,
)
from busmonai.errors import BusmonaiInputError


def _wh(mask: np.ndarray) -> tuple[int, int]:
    x0, y0, x1, y1 = mask_bbox(mask)
    return x1 - x0, y1 - y0


@pytest.mark.parametrize("label", ["benign", "malignant"])
def test_class_aspect_rule_binary_single_component(label):
    masks = generate_ellipse_masks(label, 30, (96, 120), seed=3)
    for m in masks:
        assert m.shape == (96, 120) and m.dtype == np.uint8
        assert set(np.unique(m)) <= {0, 255} and m.any()
        w, h = _wh(m)
        assert (w > h) if label == "benign" else (w < h), (label, w, h)
        _, n = ndimage.label(m > 0, structure=np.ones((3, 3)))
        assert n == 1
        assert np.array_equal(ndimage.binary_fill_holes(m > 0), m > 0)


@pytest.mark.parametrize("label", ["benign", "malignant"])
def test_rule_holds_for_strong_deformation_and_all_sizes(label):
    rng = np.random.default_rng(0)
    for size_class in SIZE_CLASSES:
        for _ in range(5):
            m = generate_ellipse_mask(label, 64, rng, size_class=size_class, sigma=0.4)
            w, h = _wh(m)
            assert (w > h) if label == "benign" else (w < h)


@pytest.mark.parametrize(
    "label, box",
    [
        ("benign", (20, 30, 100, 70)),
        ("benign", (20, 10, 60, 110)),  # tall box, benign: a wide ellipse inside it
        ("malignant", (20, 10, 60, 110)),
        ("malignant", (10, 40, 120, 80)),  # wide box, malignant: a tall ellipse inside it
    ],
)
def test_inside_given_bbox(label, box):
    x0, y0, x1, y1 = box
    for m in generate_ellipse_masks(label, 10, 128, seed=1, bbox=box):
        mx0, my0, mx1, my1 = mask_bbox(m)
        assert x0 <= mx0 and y0 <= my0 and mx1 <= x1 and my1 <= y1
        w, h = _wh(m)
        assert (w > h) if label == "benign" else (w < h)


def test_bbox_aspect_filled_when_consistent():
    box = (20, 30, 100, 70)
    m = generate_ellipse_masks("benign", 1, 128, seed=0, bbox=box, sigma=0.0)[0]
    w, h = _wh(m)
    assert w >= 0.9 * 80 and h >= 0.9 * 40


def test_determinism():
    a = generate_ellipse_masks("malignant", 4, 80, seed=11)
    b = generate_ellipse_masks("malignant", 4, 80, seed=11)
    c = generate_ellipse_masks("malignant", 4, 80, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    m1 = generate_ellipse_mask("benign", 64, np.random.default_rng(5))
    m2 = generate_ellipse_mask("benign", 64, np.random.default_rng(5))
    assert np.array_equal(m1, m2)


@pytest.mark.parametrize("label", ["benign", "malignant"])
def test_size_classes_monotone_in_area(label):
    areas = [np.mean([m.sum() / 255 for m in generate_ellipse_masks(label, 15, 96, seed=2, size_class=sc)])
             for sc in SIZE_CLASSES]
    assert areas[0] < areas[1] < areas[2], areas


@pytest.mark.parametrize("label", ["benign", "malignant"])
def test_sigma_increases_curvature(label):
    smooth = [boundary_curvature(m) for m in generate_ellipse_masks(label, 15, 96, seed=4, sigma=0.02)]
    rough = [boundary_curvature(m) for m in generate_ellipse_masks(label, 15, 96, seed=4, sigma=0.3)]
    assert np.mean(rough) > 1.3 * np.mean(smooth)


def test_default_prior_malignant_more_irregular():
    prior = EllipseMaskPrior.default()
    assert prior.classes["malignant"].sigma > prior.classes["benign"].sigma
    benign = [boundary_curvature(m) for m in generate_ellipse_masks("benign", 12, 128, seed=0)]
    malignant = [boundary_curvature(m) for m in generate_ellipse_masks("malignant", 12, 128, seed=0)]
    assert np.mean(malignant) > np.mean(benign)


def test_prior_dict_roundtrip():
    prior = EllipseMaskPrior.default()
    data = json.loads(json.dumps(prior.to_dict()))
    assert EllipseMaskPrior.from_dict(data) == prior
    with pytest.raises(BusmonaiInputError):
        EllipseMaskPrior.from_dict({"classes": {"benign": data["classes"]["benign"]}})
    with pytest.raises(BusmonaiInputError):
        EllipseMaskPrior.from_dict({})
    with pytest.raises(BusmonaiInputError, match="size_edges"):
        ClassShapePrior(size_edges=(0.3, 0.2, 0.4, 0.5), elongation_mean=0.5, elongation_std=0.1, sigma=0.1)


def _synthetic_training_set(rng: np.random.Generator) -> tuple[list[np.ndarray], list[str]]:
    """Benign: smooth small ellipses 2:1; malignant: larger lobulated blobs about 1.2:1."""
    masks, labels = [], []
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float64) + 0.5
    for _ in range(12):
        b = rng.uniform(6, 9)
        cx, cy = rng.uniform(35, 61, size=2)
        masks.append(((((xx - cx) / (2 * b)) ** 2 + ((yy - cy) / b) ** 2) <= 1).astype(np.uint8))
        labels.append("benign")
    for _ in range(12):
        r0 = rng.uniform(18, 24)
        phase = rng.uniform(0, 2 * np.pi)
        t = np.arctan2(yy - 48, (xx - 48) / 1.2)
        rad = np.hypot((xx - 48) / 1.2, yy - 48)
        masks.append((rad <= r0 * (1 + 0.2 * np.cos(7 * t + phase))).astype(np.uint8))
        labels.append("malignant")
    masks.append(np.zeros((96, 96), dtype=np.uint8))
    labels.append("normal")  # ignored
    return masks, labels


def test_fit_recovers_orderings():
    masks, labels = _synthetic_training_set(np.random.default_rng(0))
    prior = EllipseMaskPrior.fit(masks, labels, calibration_draws=4, calibration_size=64)
    ben, mal = prior.classes["benign"], prior.classes["malignant"]
    assert ben.n == 12 and mal.n == 12
    assert ben.elongation_mean == pytest.approx(np.log(2.0), abs=0.1)
    assert ben.elongation_mean > mal.elongation_mean
    assert ben.size_edges[-1] < mal.size_edges[0]
    assert mal.curvature > ben.curvature
    assert mal.sigma > ben.sigma
    # Datalist-style integer labels work too; no calibration keeps default sigmas.
    int_labels = [0 if lab == "benign" else 1 if lab == "malignant" else None for lab in labels]
    quick = EllipseMaskPrior.fit(masks, int_labels, calibrate_sigma=False)
    assert quick.classes["benign"].sigma == EllipseMaskPrior.default().classes["benign"].sigma
    assert quick.classes["malignant"].size_edges == mal.size_edges


def test_fit_errors_and_fallback():
    masks, labels = _synthetic_training_set(np.random.default_rng(0))
    with pytest.raises(BusmonaiInputError, match="labels"):
        EllipseMaskPrior.fit(masks, labels[:-1])
    with pytest.raises(BusmonaiInputError, match="empty"):
        EllipseMaskPrior.fit([np.zeros((8, 8))], ["benign"])
    with pytest.raises(BusmonaiInputError, match="no benign or malignant"):
        EllipseMaskPrior.fit([np.ones((8, 8))], ["normal"])
    with pytest.warns(UserWarning, match="malignant"):
        prior = EllipseMaskPrior.fit(masks[:12], labels[:12], calibrate_sigma=False)
    assert prior.classes["malignant"] == EllipseMaskPrior.default().classes["malignant"]


def test_generator_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(BusmonaiInputError, match="benign, malignant"):
        generate_ellipse_mask("normal", 64, rng)
    with pytest.raises(BusmonaiInputError, match="small, medium, large"):
        generate_ellipse_mask("benign", 64, rng, size_class="huge")
    with pytest.raises(BusmonaiInputError, match="outside"):
        generate_ellipse_mask("benign", 64, rng, bbox=(10, 10, 70, 40))
    with pytest.raises(BusmonaiInputError, match="zero or negative area"):
        generate_ellipse_mask("benign", 64, rng, bbox=(10, 10, 10, 40))
    with pytest.raises(BusmonaiInputError, match=">= 16"):
        generate_ellipse_mask("benign", 12, rng)
    with pytest.raises(BusmonaiInputError, match=">= 16"):
        generate_ellipse_mask("benign", (64, 8), rng)
    with pytest.raises(BusmonaiInputError, match="sigma"):
        generate_ellipse_mask("benign", 64, rng, sigma=-0.1)
    with pytest.raises(BusmonaiInputError, match="larger box"):
        generate_ellipse_mask("benign", 64, rng, bbox=(10, 10, 12, 12))
    with pytest.raises(BusmonaiInputError, match="n must be"):
        generate_ellipse_masks("benign", -1, 64, seed=0)
