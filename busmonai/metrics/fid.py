"""Fréchet Inception Distance and Kernel Inception Distance between two image sets.

- **FID** (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a
  local Nash equilibrium", NeurIPS): the Fréchet distance between Gaussians fitted to the
  InceptionV3 pool features of the two sets,
  ``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))``, with the matrix square root from
  ``scipy.linalg.sqrtm`` as in the reference implementations: when it is not finite, ``eps I``
  (``eps = 1e-6``) is added to both covariances; a complex result keeps its real part (an
  imaginary diagonal above 1e-3 relative to the trace is reported as an error, a numerical
  failure).
- **KID** (Bińkowski et al. 2018, "Demystifying MMD GANs", ICLR): the unbiased estimate of the
  squared maximum mean discrepancy with the cubic polynomial kernel
  ``k(x, y) = (x . y / d + 1)^3``, averaged over ``subsets`` random subsets of ``subset_size``
  features drawn without replacement from each set (``subset_size`` is capped at the smaller
  set), with the standard deviation over subsets (``ddof = 0``, as torch-fidelity and
  Clean-FID report it). Unbiased for independent samples, so it can be slightly negative; it
  is much less biased than FID for sets of a few hundred images (the project's primary number,
  issue 7). For a set against itself (the same samples on both sides) the estimate is
  ``(2 / m) (mean off-diagonal k - mean diagonal k) <= 0``, which vanishes like ``1 / m``.

Speed: with ``n_1 + n_2`` features of dimension ``d`` and ``n_1 + n_2 <= d`` (every set of up
to about a thousand images), the covariances live in the span of the centred features, so
:func:`fid_from_features` computes the trace term in an orthonormal basis of that span
(``k <= n_1 + n_2`` dimensions, ``tr sqrtm(S_1 S_2) = tr sqrtm(A_1 A_2)`` with
``A_i = Q^T S_i Q``): exact up to rounding, and it replaces a 2048 x 2048 ``sqrtm`` (about a
minute on two cores) by a small one.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy import linalg

from busmonai.errors import BusmonaiInputError
from busmonai.metrics.inception import FeatureSet, compute_features, find_cached, inception_features
from busmonai.metrics.sources import image_source, load_image_stack, source_split

SQRTM_EPS = 1e-6
"""Offset added to the covariance diagonals when the matrix square root is not finite."""
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``ddof = 1``) of ``(N, d)`` features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float = SQRTM_EPS) -> float:
    """``tr sqrtm(sigma1 @ sigma2)`` with the reference implementations' fallbacks."""
    with warnings.catch_warnings():  # singular products are expected (fewer samples than dims)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    trace = np.trace(covmean)
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > 1e-3 * max(1.0, abs(trace.real)):
            raise BusmonaiInputError(
                f"FID: the matrix square root has an imaginary part of {imaginary:.3g}; the features are "
                "degenerate (identical or constant images?)"
            )
        trace = trace.real
    return float(trace)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = SQRTM_EPS) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (Heusel et al. 2017)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise BusmonaiInputError(f"FID: statistics of different dimensions {mu1.shape} and {mu2.shape}")
    diff = mu1 - mu2
    trace = _trace_sqrt_product(sigma1, sigma2, eps)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace)


def fid_from_features(features1: np.ndarray, features2: np.ndarray, eps: float = SQRTM_EPS) -> float:
    """FID between two sets of features ``(N1, d)`` and ``(N2, d)``, each with ``N >= 2``.

    Uses the exact low-rank reduction of the module docstring when ``N1 + N2 <= d``.
    """
    f1, f2 = np.asarray(features1, dtype=np.float64), np.asarray(features2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise BusmonaiInputError(f"FID: expected (N, d) features of one d, got {f1.shape} and {f2.shape}")
    if len(f1) < 2 or len(f2) < 2:
        raise BusmonaiInputError(f"FID needs at least two samples per set, got {len(f1)} and {len(f2)}")
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    if len(f1) + len(f2) > f1.shape[1]:
        return frechet_distance(mu1, np.cov(f1, rowvar=False), mu2, np.cov(f2, rowvar=False), eps)
    basis, _ = np.linalg.qr(np.concatenate([f1 - mu1, f2 - mu2]).T)  # (d, k) spans both covariances
    _, a1 = feature_statistics(f1 @ basis)
    _, a2 = feature_statistics(f2 @ basis)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(a1) + np.trace(a2) - 2.0 * _trace_sqrt_product(a1, a2, eps))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID kernel ``(x . y / d + 1)^3`` between rows of ``x`` and ``y``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between equal-sized samples ``x`` and ``y`` with :func:`polynomial_kernel`."""
    m = len(x)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


def kid_from_features(
    features1: np.ndarray,
    features2: np.ndarray,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): mean and standard deviation of the subset MMD^2 estimates.

    Args:
        features1: ``(N1, d)`` features.
        features2: ``(N2, d)`` features.
        subsets: number of random subsets.
        subset_size: samples per subset, capped at ``min(N1, N2)``.
        seed: seed of the subset draws.
    """
    f1, f2 = np.asarray(features1, dtype=np.float64), np.asarray(features2, dtype=np.float64)
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise BusmonaiInputError(f"KID needs at least two samples per set, got {len(f1)} and {len(f2)}")
    if subsets < 1:
        raise BusmonaiInputError(f"--kid-subsets {subsets}: use at least 1")
    rng = np.random.default_rng(seed)
    values = np.array([
        unbiased_mmd2(f1[rng.choice(len(f1), m, replace=False)], f2[rng.choice(len(f2), m, replace=False)])
        for _ in range(subsets)
    ])
    return float(values.mean()), float(values.std())


def compute_fid_kid(
    real: Path | str,
    fake: Path | str,
    size: int | None = None,
    split: str | None = None,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    batch_size: int = 16,
    cache: bool = True,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """FID and KID between two image sets (folders or datalists; see :mod:`busmonai.metrics.sources`).

    Args:
        real: folder or datalist of real images.
        fake: folder or datalist of generated images.
        size: compare at ``size x size`` px (images are resized first); ``None`` requires one
            size per set.
        split: datalist split to use (``None``: all splits); tumor classes only; a synthetic
            datalist is used whole (:func:`~busmonai.metrics.sources.source_split`).
        subsets: KID subsets.
        subset_size: KID subset size (capped at the smaller set).
        batch_size: images per Inception forward pass.
        cache: use the per-folder feature cache.
        progress: show progress bars.
        seed: seed of the KID subsets.

    Returns:
        ``{"fid", "kid", "kid_std", "n_real", "n_fake", "size", "kid_subsets", "kid_subset_size",
        "real", "fake", "cache": {"real", "fake"}}``.

    Raises:
        BusmonaiInputError: fewer than two images in a set, mixed sizes without ``size``,
            unreadable files, missing folder or datalist.
    """
    if subsets < 1 or subset_size < 2:
        raise BusmonaiInputError(
            f"KID needs --kid-subsets >= 1 and --kid-subset-size >= 2, got {subsets} and {subset_size}"
        )
    sources = {
        name: image_source(path, source_split(path, split))
        for name, path in (("REAL", real), ("FAKE", fake))
    }
    sets: dict[str, FeatureSet | None] = {
        name: find_cached(source, size) if cache else None for name, source in sources.items()
    }
    # read (and check) every image of both sets before the slow network runs
    images = {
        name: load_image_stack(source.paths, size=size, name=f"{name} ({source.origin})")
        for name, source in sources.items() if sets[name] is None
    }
    for name, stack in images.items():
        sets[name] = compute_features(sources[name], stack, size, name, batch_size, cache, progress)
    done = {name: feature_set for name, feature_set in sets.items() if feature_set is not None}
    f_real, f_fake = done["REAL"].features, done["FAKE"].features
    kid, kid_std = kid_from_features(f_real, f_fake, subsets, subset_size, seed)
    return {
        "fid": fid_from_features(f_real, f_fake),
        "kid": kid,
        "kid_std": kid_std,
        "n_real": int(len(f_real)),
        "n_fake": int(len(f_fake)),
        "size": size,
        "kid_subsets": subsets,
        "kid_subset_size": int(min(subset_size, len(f_real), len(f_fake))),
        "real": str(real),
        "fake": str(fake),
        "cache": {k.lower(): (str(v.cache) if v.cache else None) for k, v in done.items()},
    }


def kid_of_images(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> float:
    """KID between two in-memory stacks of greyscale images ``(N, H, W)`` in [0, 1]."""
    f_real = inception_features(np.asarray(real, dtype=np.float32) * 255.0)
    f_fake = inception_features(np.asarray(fake, dtype=np.float32) * 255.0)
    return kid_from_features(f_real, f_fake, seed=seed)[0]
