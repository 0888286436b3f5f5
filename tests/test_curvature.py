"""Tests of the scale-free mean absolute boundary curvature (numpy and torch forms)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from busmonai.clinical.curvature import (
    CANONICAL_MARGIN,
    CANONICAL_SIZE,
    boundary_curvature,
    boundary_curvature_torch,
    canonicalize_mask,
    curvature_statistics,
)
from busmonai.errors import BusmonaiInputError

BUSI_ROOT = Path(__file__).resolve().parents[2] / "shared/data/Dataset_BUSI_with_GT"
EXACT_DISC = 2.0 * (1.0 + 2.0 * CANONICAL_MARGIN) / CANONICAL_SIZE  # 1 / radius in canonical pixels


def polar_mask(height: int, width: int, cx: float, cy: float, radius, dtype=np.uint8) -> np.ndarray:
    """Binary star-shaped mask ``r <= radius(theta)`` with pixel centres at ``i + 1/2``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    theta = np.arctan2(yy - cy, xx - cx)
    return (np.hypot(xx - cx, yy - cy) <= radius(theta)).astype(dtype)


def disc(r: float, height: int, width: int, cx: float | None = None, cy: float | None = None) -> np.ndarray:
    cx = width / 2 + 0.3 if cx is None else cx
    cy = height / 2 + 0.2 if cy is None else cy
    return polar_mask(height, width, cx, cy, lambda t: r + 0 * t)


def ellipse(a: float, b: float, size: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return ((((xx - size / 2) / a) ** 2 + ((yy - size / 2) / b) ** 2) <= 1).astype(np.uint8)


def lobulated(size: int = 128, r: float = 30.0) -> np.ndarray:
    return polar_mask(size, size, size / 2, size / 2, lambda t: r * (1 + 0.2 * np.cos(6 * t)))


def spiculated(size: int = 128, r: float = 30.0) -> np.ndarray:
    return polar_mask(size, size, size / 2, size / 2, lambda t: r * (1 + 0.35 * np.maximum(0, np.cos(10 * t)) ** 8))


def test_disc_is_scale_free_and_near_exact():
    values = [
        boundary_curvature(disc(8, 40, 52)),
        boundary_curvature(disc(16, 100, 96)),
        boundary_curvature(disc(40, 128, 160)),
    ]
    assert max(values) / min(values) < 1.07, values
    for v in values:
        assert v == pytest.approx(EXACT_DISC, rel=0.07)


def test_shape_ordering_disc_ellipse_lobulated_spiculated():
    k_disc = boundary_curvature(disc(30, 128, 128))
    k_ell = boundary_curvature(ellipse(40, 20))
    k_lob = boundary_curvature(lobulated())
    k_spic = boundary_curvature(spiculated())
    assert k_disc < k_ell < k_lob < k_spic, (k_disc, k_ell, k_lob, k_spic)
    assert k_ell > 1.15 * k_disc


def test_aspect_is_preserved_by_canonical_crop():
    canvas = canonicalize_mask(ellipse(40, 20))
    assert canvas.shape == (CANONICAL_SIZE, CANONICAL_SIZE)
    inside = canvas > 0.5
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    assert (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1) == pytest.approx(2.0, rel=0.08)


def test_translation_invariance():
    base = lobulated(96, 25)
    shifted = np.roll(np.roll(base, 7, axis=0), -11, axis=1)
    assert boundary_curvature(shifted) == pytest.approx(boundary_curvature(base), rel=1e-9)
    # A sub-pixel shift changes the raster; the value must barely move.
    sub = polar_mask(96, 96, 48.37, 47.71, lambda t: 25 * (1 + 0.2 * np.cos(6 * t)))
    assert boundary_curvature(sub) == pytest.approx(boundary_curvature(base), rel=0.05)
    # Padding the image does not change the lesion.
    padded = np.pad(base, ((10, 30), (0, 50)))
    assert boundary_curvature(padded) == pytest.approx(boundary_curvature(base), rel=1e-9)


def test_input_kinds_are_equivalent():
    m = lobulated(80, 20)
    ref = boundary_curvature(m)
    assert boundary_curvature(m.astype(bool)) == pytest.approx(ref, rel=1e-12)
    assert boundary_curvature(m * 255) == pytest.approx(ref, rel=1e-12)
    assert boundary_curvature(m.astype(np.float32)) == pytest.approx(ref, rel=1e-12)
    assert boundary_curvature(m[None]) == pytest.approx(ref, rel=1e-12)


def test_numpy_errors():
    with pytest.raises(BusmonaiInputError, match="empty"):
        boundary_curvature(np.zeros((32, 32)))
    with pytest.raises(BusmonaiInputError, match="2-D"):
        boundary_curvature(np.zeros((2, 3, 32, 32)))
    bad = lobulated(64, 15).astype(float)
    bad[0, 0] = np.nan
    with pytest.raises(BusmonaiInputError, match="NaN"):
        boundary_curvature(bad)
    assert issubclass(BusmonaiInputError, ValueError)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_numpy_and_torch_agree(dtype, tol):
    rng = np.random.default_rng(0)
    binary = polar_mask(96, 80, 37, 50, lambda t: 20 * (1 + 0.2 * np.cos(6 * t))).astype(np.float64)
    soft = np.clip(0.9 * binary + rng.uniform(0, 0.08, binary.shape), 0, 1)
    for m in (binary, soft, ellipse(30, 12).astype(np.float64)):
        ref = boundary_curvature(m)
        got = boundary_curvature_torch(torch.tensor(m, dtype=dtype)[None, None])
        assert got.dtype == dtype and got.shape == (1,)
        assert got.item() == pytest.approx(ref, rel=tol)
    # The canonical crops agree as well.
    t_canvas = canonicalize_mask(torch.tensor(soft, dtype=torch.float64))
    np.testing.assert_allclose(t_canvas.numpy(), canonicalize_mask(soft), atol=1e-12)


def test_torch_shapes_and_mixed_batch():
    m = torch.tensor(lobulated(64, 16), dtype=torch.float32)
    empty = torch.zeros(64, 64)
    faint = torch.full((64, 64), 0.3)  # soft output with nothing above 0.5: treated as empty
    batch = torch.stack([empty, m, faint, m]).unsqueeze(1).requires_grad_()
    k = boundary_curvature_torch(batch)
    assert k.shape == (4,)
    assert k[0].item() == 0.0 and k[2].item() == 0.0
    assert k[1].item() == pytest.approx(boundary_curvature(m.numpy()), rel=1e-4)
    assert k[3].item() == pytest.approx(k[1].item(), rel=1e-6)
    k.sum().backward()
    grad = batch.grad
    assert torch.isfinite(grad).all()
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0
    assert grad[1].abs().sum() > 0
    # (B, H, W) input gives the same values.
    k3 = boundary_curvature_torch(batch.detach()[:, 0])
    torch.testing.assert_close(k3, k.detach())


def test_torch_gradient_is_useful():
    """A few gradient steps on soft-mask logits lower the curvature (the L_cur use case)."""
    base = torch.tensor(lobulated(64, 18), dtype=torch.float32)
    logits = ((base - 0.5) * 6.0).clone().requires_grad_()
    opt = torch.optim.Adam([logits], lr=0.1)
    start = boundary_curvature_torch(torch.sigmoid(logits)[None, None]).item()
    for _ in range(15):
        opt.zero_grad()
        k = boundary_curvature_torch(torch.sigmoid(logits)[None, None])
        k.sum().backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
        opt.step()
    end = boundary_curvature_torch(torch.sigmoid(logits)[None, None]).item()
    assert end < 0.9 * start, (start, end)


def test_curvature_statistics():
    masks = [disc(20, 64, 64), ellipse(30, 15), lobulated()]
    values = [boundary_curvature(m) for m in masks]
    stats = curvature_statistics(masks)
    assert stats["n"] == 3
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values))
    assert curvature_statistics(iter(masks))["n"] == 3
    empty = curvature_statistics([])
    assert empty["n"] == 0 and np.isnan(empty["mean"])


@pytest.mark.skipif(not BUSI_ROOT.is_dir(), reason="BUSI masks not available")
def test_busi_malignant_above_benign():
    from PIL import Image

    stats = {}
    for cls in ("benign", "malignant"):
        groups: dict[str, list[Path]] = {}
        for path in sorted((BUSI_ROOT / cls).glob("*_mask*.png")):
            groups.setdefault(path.name.split("_mask")[0], []).append(path)
        masks = []
        for paths in groups.values():
            merged = np.logical_or.reduce([np.asarray(Image.open(p).convert("L")) > 127 for p in paths])
            if merged.any():
                masks.append(merged)
        assert len(masks) > 20
        stats[cls] = curvature_statistics(masks)
    assert stats["malignant"]["mean"] > stats["benign"]["mean"] + stats["benign"]["std"], stats


def test_torch_dtypes():
    m = lobulated(64, 16)
    ref = boundary_curvature(m)
    for t in (torch.tensor(m * 255), torch.tensor(m.astype(bool)), torch.tensor(m, dtype=torch.float16)):
        k = boundary_curvature_torch(t[None])
        assert k.dtype == torch.float32
        assert k.item() == pytest.approx(ref, rel=1e-4)
