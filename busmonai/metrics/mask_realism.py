"""How real do generated lesion masks look? (``busmonai evaluate masks``).

Three readings of a set of generated masks against real ones, each per tumor class
(benign / malignant) where the classes are known:

1. **Classifier two-sample test** (C2ST; Lopez-Paz & Oquab, "Revisiting Classifier Two-Sample
   Tests", ICLR 2017): a small CNN is trained to tell real masks from generated ones, and the
   score is its ROC AUC on masks it did not see (:func:`classifier_two_sample_test`). 0.5 means
   the classifier cannot tell the two sets apart; 1.0 means every held-out mask is told apart.
   Under the null hypothesis (same distribution) the AUC is about 0.5 with standard deviation
   ``sqrt((n_real + n_gen + 1) / (12 n_real n_gen))`` (the Mann-Whitney null), reported as
   ``null_std``. The classifier sees either the whole mask at 64 px (``frame="image"``: shape,
   size and position) or the canonical crop of the lesion
   (:func:`busmonai.clinical.curvature.canonicalize_mask`, ``frame="lesion"``: shape alone, the
   more sensitive reading of the outline; ``busmonai evaluate masks`` reports both). Like any
   two-sample test it cannot see memorisation: a generator that copies its training masks
   scores 0.5, which is why the diversity below is reported beside it.
2. **Shape statistics** per mask (:func:`shape_statistics`): solidity (area / convex-hull
   area), eccentricity (of the ellipse with the same second moments), roughness (perimeter /
   convex-hull perimeter, 1 for convex shapes), the mean absolute boundary curvature of
   :func:`busmonai.clinical.curvature.boundary_curvature` (the measure of the SCMG curvature
   loss) and the fill of the bounding rectangle (area / area of the mask's own bounding
   rectangle). Per class, the 1-D Wasserstein distance between the generated and the real
   distribution of each statistic (:func:`compare_shape_statistics`).
3. **Diversity** (:func:`generated_diversity`, :func:`real_diversity`): for generated masks
   of the same type and the same requested rectangle (different seeds), the mean pairwise mask
   IoU; the real reference is the mean pairwise IoU of real masks of the same type whose
   rectangles are *similar*: after moving both rectangles to a common centre, their IoU is at
   least ``SIMILAR_RECT_IOU`` (0.7); the masks are compared after the same alignment (mask
   ``j`` shifted by the integer difference of the rectangle centres). A generator whose
   same-rectangle IoU is far above the real reference draws nearly the same mask for every seed.

**Pairing (like with like).** A generated mask conditioned on a class and a rectangle should be
compared with real masks of that class and rectangle. :func:`pair_with_real` gives each generated
mask the real mask of the same class whose rectangle has the highest IoU with the requested one
(the first such mask on ties); when the generator was asked for the training rectangles, the
pairing is exact (IoU 1). The two-sample test then uses, as the real sample, the paired real
mask of every generated mask (so both sets have the same classes and rectangles), and splits
*pairs* into the training and held-out halves, so that a real mask and the generated masks of its
rectangle are never on both sides. Without pairing, each class is balanced by subsampling the
larger set, so that the class mix cannot give the sets away.

**Folders** (:func:`evaluate_mask_realism`): the generated set is what ``busmonai masks`` writes
(``masks.json`` with, per mask, its file, class, bounding rectangle and the requested rectangle:
``requested_bbox`` for SCMG, the index's ``bbox`` for ``--bbox``; or a folder of such folders, like the SCMG inference bundle's ``<type>/``
sub-folders), or a plain folder of ``benign_*.png`` / ``malignant_*.png`` masks. The real set is
the ``training`` split of a prepared datalist.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance
from skimage.measure import perimeter, regionprops
from torch import nn

from busmonai.clinical.bbox import bbox_iou, mask_bbox
from busmonai.clinical.classes import TUMOR_CLASSES
from busmonai.clinical.curvature import boundary_curvature, canonicalize_mask
from busmonai.errors import BusmonaiInputError
from busmonai.metrics.fidelity import roc_auc
from busmonai.metrics.sources import datalist_items, item_class, load_mask_array, walk_image_files

__all__ = [
    "CLASSES",
    "SIMILAR_RECT_IOU",
    "STATISTICS",
    "MaskSet",
    "centred_rect_iou",
    "classifier_two_sample_test",
    "compare_shape_statistics",
    "evaluate_mask_realism",
    "generated_diversity",
    "load_generated_masks",
    "load_real_masks",
    "mean_pairwise_iou",
    "pair_with_real",
    "real_diversity",
    "realism_rows",
    "shape_statistics",
    "write_comparison_sheet",
]

CLASSES: tuple[str, ...] = TUMOR_CLASSES
"""Tumor classes compared separately (the order of every per-class output)."""
STATISTICS: tuple[str, ...] = ("solidity", "eccentricity", "roughness", "curvature", "rect_fill")
"""Per-mask shape statistics of :func:`shape_statistics`."""
SIMILAR_RECT_IOU = 0.7
"""Two rectangles are similar when their IoU, after moving them to a common centre, is at least this."""
CLASSIFIER_SIZE = 64
"""Side, in pixels, at which the two-sample classifier sees the masks."""
CLASSIFIER_CHANNELS: tuple[int, ...] = (8, 16, 32, 32)
"""Widths of the classifier's stride-2 convolutions (64 px -> 4 px)."""
CLASSIFIER_EPOCHS = 30
"""Passes over the training half."""
CLASSIFIER_BATCH = 32
CLASSIFIER_LR = 3e-3
MIN_PER_SET = 4
"""Fewest masks per set accepted by the two-sample test (two per half)."""
MAX_REAL_PAIRS = 5000
"""The real diversity reference averages at most this many similar pairs per class (seeded sample)."""
SHEET_COLUMNS = 8
"""Masks per row of the comparison sheet."""
SHEET_FILL = 96
"""Grey value of the sheet's padding and empty cells."""
RECT_GREY = 128
"""Grey value of the rectangle outlines drawn on the sheet."""
GENERATED_INDEX = "masks.json"
"""The index file ``busmonai masks`` writes into its output folder."""


# --------------------------------------------------------------------------------------------
# classifier two-sample test


class _MaskCritic(nn.Module):
    """Stride-2 3x3 convolutions with batch norm and LeakyReLU, global average pooling, one logit."""

    def __init__(self, channels: Sequence[int] = CLASSIFIER_CHANNELS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for width in channels:
            layers += [nn.Conv2d(in_ch, width, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(width),
                       nn.LeakyReLU(0.2)]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))[:, 0]


def _as_stack(masks: np.ndarray | Sequence[np.ndarray], name: str) -> np.ndarray:
    """``(N, H, W)`` bool stack from an array or a list of equally sized masks."""
    arr = np.asarray(masks)
    if arr.ndim != 3:
        raise BusmonaiInputError(f"{name}: expected a stack of masks (N, H, W), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    peak = float(arr.max()) if arr.size else 0.0
    return arr > 0.5 * peak if peak > 0 else np.zeros(arr.shape, dtype=bool)


def _class_names(labels: Sequence[Any] | None, n: int, name: str) -> list[str]:
    """Class names (``benign`` / ``malignant``, or datalist labels 0 / 1) for ``n`` masks; ``all`` without labels."""
    if labels is None:
        return ["all"] * n
    out = []
    for value in labels:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            out.append({0: "benign", 1: "malignant"}.get(int(value), str(value)))
        else:
            out.append(str(value))
    if len(out) != n:
        raise BusmonaiInputError(f"{name}: {len(out)} class labels for {n} masks; give one label per mask")
    return out


def _classifier_input(masks: np.ndarray, size: int, frame: str) -> torch.Tensor:
    """``(N, 1, size, size)`` float inputs: the whole image (area-resampled) or the lesion's canonical crop."""
    if frame == "lesion":
        crops = [canonicalize_mask(m.astype(np.float64), size=size) for m in masks]
        return torch.from_numpy(np.stack(crops)).float()[:, None]
    if frame != "image":
        raise BusmonaiInputError(f"unknown frame {frame!r}; use 'image' (whole mask) or 'lesion' (canonical crop)")
    x = torch.from_numpy(masks.astype(np.float32))[:, None]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


def _half_split(indices: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A seeded shuffle of ``indices`` cut into a training and a held-out half."""
    order = rng.permutation(indices)
    cut = (len(order) + 1) // 2
    return order[:cut], order[cut:]


def _null_std(n_real: int, n_gen: int) -> float:
    return math.sqrt((n_real + n_gen + 1) / (12.0 * n_real * n_gen))


def classifier_two_sample_test(
    real: np.ndarray | Sequence[np.ndarray],
    generated: np.ndarray | Sequence[np.ndarray],
    real_labels: Sequence[Any] | None = None,
    generated_labels: Sequence[Any] | None = None,
    pairs: Sequence[int] | np.ndarray | None = None,
    seed: int = 0,
    size: int = CLASSIFIER_SIZE,
    frame: str = "image",
    epochs: int = CLASSIFIER_EPOCHS,
) -> dict[str, Any]:
    """Held-out ROC AUC of a small CNN telling generated masks from real ones (Lopez-Paz & Oquab, ICLR 2017).

    The classifier (``CLASSIFIER_CHANNELS`` stride-2 3x3 convolutions with batch norm and
    LeakyReLU, global average pooling and a linear logit; about 15 k parameters) sees the masks at ``size`` px
    (area-resampled, so larger masks become soft), is trained with Adam (lr ``CLASSIFIER_LR``,
    batch ``CLASSIFIER_BATCH``, ``epochs`` passes, random horizontal flips of both sets alike) on
    one half of each set, and scores the other half; generated is the positive class. At 64 px,
    300 + 300 masks train in a few seconds on one CPU thread. Everything random (splits, flips,
    initialisation, batches) follows ``seed``; the global torch random state is left untouched.

    Args:
        real: ``(N, H, W)`` real masks (bool, or 0/1 / 0/255 numbers).
        generated: ``(M, H', W')`` generated masks.
        real_labels: class per real mask (``benign`` / ``malignant`` or 0 / 1), or None.
        generated_labels: class per generated mask, or None.
        pairs: for every generated mask, the index of its real counterpart (same class and
            rectangle; :func:`pair_with_real`). The real sample is then ``real[pairs]`` and pairs
            are split as units (grouped by the real index); without ``pairs`` each class is
            balanced by subsampling the larger set, then each set is halved.
        seed: seed of everything random.
        size: input side of the classifier.
        frame: ``image`` (the whole mask: shape, size and position) or ``lesion`` (the
            canonical crop of :func:`busmonai.clinical.curvature.canonicalize_mask`: shape only).
        epochs: training passes.

    Returns:
        ``{"auc", "null_std", "per_class": {class: auc}, "n_train_real", "n_train_generated",
        "n_test_real", "n_test_generated", "frame", "paired", "seed"}``; ``per_class`` holds the
        classes with at least two held-out masks on each side.

    Raises:
        BusmonaiInputError: fewer than ``MIN_PER_SET`` masks on a side (after balancing), labels
            that do not match the masks, or pair indices out of range.
    """
    real_arr = _as_stack(real, "real masks")
    gen_arr = _as_stack(generated, "generated masks")
    real_cls = _class_names(real_labels, len(real_arr), "real masks")
    gen_cls = _class_names(generated_labels, len(gen_arr), "generated masks")
    rng = np.random.default_rng(seed)
    train_r: list[np.ndarray] = []
    test_r: list[np.ndarray] = []
    train_g: list[np.ndarray] = []
    test_g: list[np.ndarray] = []
    if pairs is not None:
        pair_idx = np.asarray(pairs, dtype=np.int64)
        if pair_idx.shape != (len(gen_arr),) or (pair_idx.size and (pair_idx.min() < 0 or pair_idx.max() >= len(real_arr))):
            raise BusmonaiInputError(
                f"pairs must give one real index in [0, {len(real_arr)}) per generated mask ({len(gen_arr)}), "
                f"got shape {pair_idx.shape}"
            )
        for cls in sorted(set(gen_cls)):
            members = np.array([i for i, c in enumerate(gen_cls) if c == cls], dtype=np.int64)
            train_groups, test_groups = _half_split(np.unique(pair_idx[members]), rng)
            for groups, out_r, out_g in ((train_groups, train_r, train_g), (test_groups, test_r, test_g)):
                chosen = members[np.isin(pair_idx[members], groups)]
                out_g.append(chosen)
                out_r.append(pair_idx[chosen])
    else:
        for cls in sorted(set(real_cls) | set(gen_cls)):
            r_idx = np.array([i for i, c in enumerate(real_cls) if c == cls], dtype=np.int64)
            g_idx = np.array([i for i, c in enumerate(gen_cls) if c == cls], dtype=np.int64)
            n = min(len(r_idx), len(g_idx))
            for idx, train, test in ((r_idx, train_r, test_r), (g_idx, train_g, test_g)):
                a, b = _half_split(rng.permutation(idx)[:n], rng)
                train.append(a)
                test.append(b)
    tr_r, te_r = np.concatenate(train_r or [np.zeros(0, np.int64)]), np.concatenate(test_r or [np.zeros(0, np.int64)])
    tr_g, te_g = np.concatenate(train_g or [np.zeros(0, np.int64)]), np.concatenate(test_g or [np.zeros(0, np.int64)])
    if min(len(tr_r) + len(te_r), len(tr_g) + len(te_g)) < MIN_PER_SET or min(len(te_r), len(te_g)) < 2:
        raise BusmonaiInputError(
            f"the two-sample test needs at least {MIN_PER_SET} real and {MIN_PER_SET} generated masks of the same "
            f"classes, got {len(tr_r) + len(te_r)} real and {len(tr_g) + len(te_g)} generated after matching classes; "
            "draw more masks"
        )
    x_real = _classifier_input(real_arr, size, frame)
    x_gen = _classifier_input(gen_arr, size, frame)
    x_train = torch.cat([x_real[tr_r], x_gen[tr_g]])
    y_train = torch.cat([torch.zeros(len(tr_r)), torch.ones(len(tr_g))])
    x_test = torch.cat([x_real[te_r], x_gen[te_g]])
    y_test = np.concatenate([np.zeros(len(te_r), np.int64), np.ones(len(te_g), np.int64)])
    test_cls = [real_cls[i] for i in te_r] + [gen_cls[i] for i in te_g]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scores = _train_and_score(x_train, y_train, x_test, epochs)
    per_class = {}
    for cls in sorted(set(test_cls)):
        sel = np.array([c == cls for c in test_cls])
        if cls != "all" and min(int((y_test[sel] == 0).sum()), int((y_test[sel] == 1).sum())) >= 2:
            per_class[cls] = roc_auc(y_test[sel], scores[sel])
    return {
        "auc": roc_auc(y_test, scores),
        "null_std": _null_std(len(te_r), len(te_g)),
        "per_class": per_class,
        "n_train_real": len(tr_r),
        "n_train_generated": len(tr_g),
        "n_test_real": len(te_r),
        "n_test_generated": len(te_g),
        "frame": frame,
        "paired": pairs is not None,
        "seed": int(seed),
    }


def _train_and_score(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, epochs: int) -> np.ndarray:
    """Train a fresh :class:`_MaskCritic` (under the caller's seeded torch state) and score ``x_test``."""
    model = _MaskCritic()
    optimizer = torch.optim.Adam(model.parameters(), lr=CLASSIFIER_LR, weight_decay=1e-4)
    n = len(x_train)
    model.train()
    for _ in range(max(1, int(epochs))):
        order = torch.randperm(n)
        for start in range(0, n, CLASSIFIER_BATCH):
            batch = order[start : start + CLASSIFIER_BATCH]
            x = x_train[batch]
            flip = torch.rand(len(batch)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.binary_cross_entropy_with_logits(model(x), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x_test[s : s + 256]) for s in range(0, len(x_test), 256)]).double().numpy()


# --------------------------------------------------------------------------------------------
# shape statistics


def shape_statistics(mask: np.ndarray) -> dict[str, float]:
    """Solidity, eccentricity, roughness, curvature and rectangle fill of one mask.

    All lesion pixels count as one region (a mask with two lesions is one shape), so every
    statistic is defined for every non-empty mask:

    - ``solidity``: area / area of the convex hull (``skimage.measure.regionprops``): 1 for a
      convex shape, lower for lobulated or spiculated outlines;
    - ``eccentricity``: of the ellipse with the same second central moments: 0 for a disc,
      towards 1 for elongated shapes;
    - ``roughness``: perimeter / perimeter of the convex hull (both with
      ``skimage.measure.perimeter`` on the rasters, so the pixel staircase largely cancels): 1
      for convex shapes, above 1 for indented outlines;
    - ``curvature``: :func:`busmonai.clinical.curvature.boundary_curvature` (scale-free mean
      absolute boundary curvature, the measure of the SCMG curvature loss);
    - ``rect_fill``: area / area of the mask's own bounding rectangle (1 for a filled rectangle,
      pi / 4 for an axis-aligned ellipse).

    Raises:
        BusmonaiInputError: an empty or non-2-D mask.
    """
    region_mask = np.asarray(mask)
    if region_mask.ndim != 2:
        raise BusmonaiInputError(f"shape statistics need a 2-D mask, got shape {region_mask.shape}")
    region_mask = region_mask > (0 if region_mask.dtype == bool else 0.5 * max(float(region_mask.max()), 1e-12))
    if not region_mask.any():
        raise BusmonaiInputError("shape statistics of an empty mask are undefined; remove the empty mask")
    (region,) = regionprops(region_mask.astype(np.uint8))
    convex_perimeter = perimeter(region.image_convex)
    return {
        "solidity": float(region.solidity),
        "eccentricity": float(region.eccentricity),
        "roughness": float(perimeter(region.image) / convex_perimeter) if convex_perimeter > 0 else 1.0,
        "curvature": float(boundary_curvature(region_mask)),
        "rect_fill": float(region.extent),
    }


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)}


def compare_shape_statistics(
    real: Sequence[np.ndarray] | np.ndarray,
    generated: Sequence[np.ndarray] | np.ndarray,
    real_labels: Sequence[Any] | None = None,
    generated_labels: Sequence[Any] | None = None,
    real_stats: Sequence[dict[str, float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per class, the Wasserstein-1 distance between generated and real distributions of each statistic.

    Args:
        real: real masks.
        generated: generated masks.
        real_labels: class per real mask, or None (one class ``all``).
        generated_labels: class per generated mask, or None.
        real_stats: precomputed :func:`shape_statistics` of ``real`` (parallel to it).

    Returns:
        ``{class: {statistic: {"wasserstein", "wasserstein_rel" (divided by the standard deviation
        of both sets pooled, so statistics of different units compare; 0 when both are constant),
        "real": {"mean", "std", "n"}, "generated": {...}}}}`` for the classes present in both
        sets (population standard deviations).

    Raises:
        BusmonaiInputError: an empty mask, or no class present in both sets.
    """
    real_cls = _class_names(real_labels, len(real), "real masks")
    gen_cls = _class_names(generated_labels, len(generated), "generated masks")
    r_stats = list(real_stats) if real_stats is not None else [shape_statistics(m) for m in real]
    g_stats = [shape_statistics(m) for m in generated]
    shared = [c for c in (*CLASSES, "all") if c in set(real_cls) & set(gen_cls)]
    shared += sorted(set(real_cls) & set(gen_cls) - set(shared))
    if not shared:
        raise BusmonaiInputError("the real and generated masks share no class; compare masks of the same tumor types")
    out: dict[str, dict[str, Any]] = {}
    for cls in shared:
        out[cls] = {}
        for name in STATISTICS:
            r = np.array([s[name] for s, c in zip(r_stats, real_cls) if c == cls])
            g = np.array([s[name] for s, c in zip(g_stats, gen_cls) if c == cls])
            w = float(wasserstein_distance(g, r))
            spread = float(np.concatenate([r, g]).std())
            out[cls][name] = {"wasserstein": w, "wasserstein_rel": w / spread if spread > 1e-12 else 0.0,
                              "real": _summary(r), "generated": _summary(g)}
    return out


# --------------------------------------------------------------------------------------------
# pairing and diversity


def _rect_array(rects: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    arr = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    return arr


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every rectangle of ``a`` (K, 4) with every rectangle of ``b`` (L, 4); the formula of
    :func:`busmonai.clinical.bbox.bbox_iou`, vectorised."""
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def centred_rect_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(x0, y0, x1, y1)`` rectangles after moving them to a common centre.

    Depends only on the sides: ``min(w_a, w_b) min(h_a, h_b) / (w_a h_a + w_b h_b - that)``.
    """
    wa, ha = a[2] - a[0], a[3] - a[1]
    wb, hb = b[2] - b[0], b[3] - b[1]
    inter = min(wa, wb) * min(ha, hb)
    union = wa * ha + wb * hb - inter
    return float(inter / union) if union > 0 else 0.0


def pair_with_real(
    generated_labels: Sequence[Any],
    generated_rects: Sequence[Sequence[float]] | np.ndarray,
    real_labels: Sequence[Any],
    real_rects: Sequence[Sequence[float]] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """For each generated mask, the real mask of the same class whose rectangle overlaps its own most.

    Args:
        generated_labels: class per generated mask.
        generated_rects: the rectangle each generated mask was drawn for (the requested one, or
            its own bounding rectangle when none was requested), ``(x0, y0, x1, y1)``.
        real_labels: class per real mask.
        real_rects: the real masks' bounding rectangles.

    Returns:
        ``(indices, ious)``: the real index (the lowest on ties) and the rectangle IoU of each
        pairing (1 when the generator was asked for that real mask's rectangle).

    Raises:
        BusmonaiInputError: a generated class without any real mask.
    """
    gen_cls = _class_names(generated_labels, len(generated_labels), "generated masks")
    real_cls = _class_names(real_labels, len(real_labels), "real masks")
    g_rects, r_rects = _rect_array(generated_rects), _rect_array(real_rects)
    indices = np.zeros(len(gen_cls), dtype=np.int64)
    ious = np.zeros(len(gen_cls), dtype=np.float64)
    for cls in sorted(set(gen_cls)):
        g_idx = np.array([i for i, c in enumerate(gen_cls) if c == cls], dtype=np.int64)
        r_idx = np.array([i for i, c in enumerate(real_cls) if c == cls], dtype=np.int64)
        if not len(r_idx):
            raise BusmonaiInputError(f"no real {cls} masks to pair the generated {cls} masks with; "
                                     f"use a datalist whose split holds {cls} masks")
        matrix = _iou_matrix(g_rects[g_idx], r_rects[r_idx])
        best = matrix.argmax(axis=1)
        indices[g_idx] = r_idx[best]
        ious[g_idx] = matrix[np.arange(len(g_idx)), best]
    return indices, ious


def _shifted_iou(a: np.ndarray, b: np.ndarray, dy: int = 0, dx: int = 0) -> float:
    """IoU of mask ``a`` with mask ``b`` moved by ``(dy, dx)`` pixels (pixels moved out of the frame
    still count in the union, so the IoU compares the two shapes)."""
    h, w = a.shape
    ys_a, ys_b = slice(max(0, dy), min(h, h + dy)), slice(max(0, -dy), min(h, h - dy))
    xs_a, xs_b = slice(max(0, dx), min(w, w + dx)), slice(max(0, -dx), min(w, w - dx))
    inter = int(np.logical_and(a[ys_a, xs_a], b[ys_b, xs_b]).sum())
    union = int(a.sum()) + int(b.sum()) - inter
    return inter / union if union > 0 else 1.0


def mean_pairwise_iou(masks: Sequence[np.ndarray] | np.ndarray) -> float:
    """Mean IoU over all pairs of masks (1.0 for identical masks; needs at least two).

    Raises:
        BusmonaiInputError: fewer than two masks.
    """
    arr = [np.asarray(m) > 0 for m in masks]
    if len(arr) < 2:
        raise BusmonaiInputError(f"pairwise IoU needs at least two masks, got {len(arr)}")
    values = [_shifted_iou(arr[i], arr[j]) for i in range(len(arr)) for j in range(i + 1, len(arr))]
    return float(np.mean(values))


def generated_diversity(
    masks: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[Any] | None,
    rects: Sequence[Sequence[float] | None],
) -> dict[str, dict[str, float | int]]:
    """Mean pairwise IoU of generated masks drawn for the same class and the same requested rectangle.

    Masks are grouped by ``(class, rectangle)``; groups of one mask are ignored; each group's
    mean pairwise IoU is averaged over the groups of a class (groups weigh alike).

    Args:
        masks: generated masks.
        labels: class per mask, or None.
        rects: requested rectangle per mask (None: not drawn for a given rectangle; skipped).

    Returns:
        ``{class: {"iou", "groups", "masks"}}`` for the classes with at least one group of two or
        more masks (``iou`` lower = more diverse).
    """
    cls_names = _class_names(labels, len(masks), "generated masks")
    groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for i, (cls, rect) in enumerate(zip(cls_names, rects)):
        if rect is not None:
            groups.setdefault((cls, tuple(int(v) for v in rect)), []).append(i)
    out: dict[str, dict[str, float | int]] = {}
    for cls in [c for c in (*CLASSES, "all") if c in cls_names] + sorted(set(cls_names) - {*CLASSES, "all"}):
        members = [g for (c, _), g in groups.items() if c == cls and len(g) >= 2]
        if members:
            values = [mean_pairwise_iou([masks[i] for i in g]) for g in members]
            out[cls] = {"iou": float(np.mean(values)), "groups": len(members), "masks": sum(len(g) for g in members)}
    return out


def real_diversity(
    masks: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[Any] | None,
    rects: Sequence[Sequence[float]] | np.ndarray,
    min_rect_iou: float = SIMILAR_RECT_IOU,
    max_pairs: int = MAX_REAL_PAIRS,
    seed: int = 0,
) -> dict[str, dict[str, float | int]]:
    """Mean pairwise IoU of real masks of the same class with similar rectangles (the reference of
    :func:`generated_diversity`).

    Two real masks form a pair when their rectangles are similar: :func:`centred_rect_iou` at
    least ``min_rect_iou``. The second mask is moved by the integer difference of the rectangle
    centres before the IoU, so the IoU measures how alike the two lesions are inside comparable
    rectangles, not where they lie. At most ``max_pairs`` pairs per class (a seeded sample) are
    averaged.

    Returns:
        ``{class: {"iou", "pairs"}}`` for the classes with at least one similar pair.
    """
    cls_names = _class_names(labels, len(masks), "real masks")
    boxes = _rect_array(rects)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    centres = np.stack([0.5 * (boxes[:, 1] + boxes[:, 3]), 0.5 * (boxes[:, 0] + boxes[:, 2])], axis=1)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float | int]] = {}
    for cls in [c for c in (*CLASSES, "all") if c in cls_names] + sorted(set(cls_names) - {*CLASSES, "all"}):
        idx = np.array([i for i, c in enumerate(cls_names) if c == cls], dtype=np.int64)
        if len(idx) < 2:
            continue
        w, h = widths[idx], heights[idx]
        inter = np.minimum(w[:, None], w[None, :]) * np.minimum(h[:, None], h[None, :])
        union = (w * h)[:, None] + (w * h)[None, :] - inter
        similar = np.triu(inter / np.where(union > 0, union, 1) >= min_rect_iou, k=1)
        ii, jj = np.nonzero(similar)
        if not len(ii):
            continue
        if len(ii) > max_pairs:
            keep = np.sort(rng.choice(len(ii), max_pairs, replace=False))
            ii, jj = ii[keep], jj[keep]
        values = []
        for a, b in zip(idx[ii], idx[jj]):
            dy, dx = np.round(centres[a] - centres[b]).astype(int)
            values.append(_shifted_iou(np.asarray(masks[a]) > 0, np.asarray(masks[b]) > 0, int(dy), int(dx)))
        out[cls] = {"iou": float(np.mean(values)), "pairs": len(values)}
    return out


# --------------------------------------------------------------------------------------------
# folders


@dataclass
class MaskSet:
    """Masks with their classes and rectangles.

    Attributes:
        masks: ``(N, H, W)`` bool.
        labels: class per mask (``benign`` / ``malignant``).
        rects: bounding rectangle per mask, ``(N, 4)`` int ``(x0, y0, x1, y1)`` (the datalist's
            ``bbox`` for real masks, the mask's own for generated ones).
        requested: per mask the rectangle it was drawn for, or None (generated masks only).
        files: source file per mask.
    """

    masks: np.ndarray
    labels: list[str]
    rects: np.ndarray
    requested: list[tuple[int, int, int, int] | None]
    files: list[Path]


def load_real_masks(datalist: Path | str, split: str | None = None) -> MaskSet:
    """The benign and malignant masks of one split (default ``training``) of a prepared datalist.

    Empty masks are skipped; the rectangle is the item's ``bbox`` (else the mask's own).

    Raises:
        BusmonaiInputError: missing or malformed datalist, no tumor masks, masks of mixed sizes.
    """
    path = Path(datalist)
    if path.suffix.lower() != ".json" or not path.is_file():
        raise BusmonaiInputError(
            f"{path}: real datalist not found; pass the datalist.json written by 'busmonai prepare' "
            "(its training masks are the real reference)"
        )
    split = split or "training"
    items = datalist_items(path, split, classes=CLASSES, keys=("mask",))
    masks, labels, rects, files = [], [], [], []
    for item in items:
        cls = item_class(item)
        if cls not in CLASSES:
            continue
        mask = load_mask_array(item["mask"])
        if masks and mask.shape != masks[0].shape:
            raise BusmonaiInputError(
                f"{item['mask']}: mask is {mask.shape[1]}x{mask.shape[0]} px but {files[0]} is "
                f"{masks[0].shape[1]}x{masks[0].shape[0]} px; re-run 'busmonai prepare' with one --size"
            )
        if not mask.any():
            continue
        box = item.get("bbox")
        rects.append(list(box) if box is not None and len(box) == 4 else list(mask_bbox(mask)))
        masks.append(mask)
        labels.append(cls)
        files.append(Path(item["mask"]))
    if not masks:
        raise BusmonaiInputError(f"{path}: no benign or malignant masks in the '{split}' split; check the datalist or --split")
    return MaskSet(np.stack(masks), labels, np.asarray(rects, dtype=np.int64), [None] * len(masks), files)


def _index_entries(folder: Path) -> list[tuple[Path, str, tuple[int, int, int, int] | None]]:
    """``(file, class, requested rectangle)`` from the ``masks.json`` of ``folder`` or of its sub-folders."""
    indexes = [folder / GENERATED_INDEX] if (folder / GENERATED_INDEX).is_file() else sorted(
        p / GENERATED_INDEX for p in folder.iterdir() if p.is_dir() and (p / GENERATED_INDEX).is_file()
    )
    found = []
    for index in indexes:
        try:
            data = json.loads(index.read_text())
            entries = list(data["masks"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise BusmonaiInputError(f"{index}: not a readable masks index ({err}); re-run 'busmonai masks'") from err
        default_box = data.get("bbox")
        for entry in entries:
            if not isinstance(entry, dict) or "mask" not in entry:
                raise BusmonaiInputError(f"{index}: an entry without 'mask'; re-run 'busmonai masks'")
            cls = str(entry.get("class") or data.get("label") or "")
            box = entry.get("requested_bbox") or default_box
            found.append((index.parent / str(entry["mask"]), cls,
                          tuple(int(v) for v in box) if box is not None else None))  # type: ignore[misc]
    return found


def load_generated_masks(folder: Path | str, shape: tuple[int, int] | None = None) -> MaskSet:
    """Generated masks from a ``busmonai masks`` folder, a folder of such folders, or a plain folder.

    Args:
        folder: the output of ``busmonai masks`` (``masks.json``), a folder whose sub-folders are
            such outputs, or a folder of ``benign_*.png`` / ``malignant_*.png`` masks (recursive;
            sheets and hidden files skipped; no requested rectangles).
        shape: required ``(H, W)`` of every mask (the real masks' size).

    Raises:
        BusmonaiInputError: missing or empty folder, an unknown class, a missing, empty or
            differently sized mask.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BusmonaiInputError(f"{folder}: generated masks folder not found; pass the --out folder of 'busmonai masks'")
    entries = _index_entries(folder)
    if not entries:
        for path, _ in walk_image_files(folder, "masks"):
            entries.append((path, path.stem.split("_")[0].lower(), None))
    if not entries:
        raise BusmonaiInputError(
            f"{folder}: no generated masks (no masks.json and no benign_*.png / malignant_*.png); "
            "pass the --out folder of 'busmonai masks'"
        )
    masks, labels, rects, requested, files = [], [], [], [], []
    for path, cls, box in entries:
        if cls not in CLASSES:
            raise BusmonaiInputError(f"{path}: unknown tumor class {cls!r}; name the file benign_*.png or malignant_*.png")
        if not path.is_file():
            raise BusmonaiInputError(f"{path}: listed in masks.json but missing; re-run 'busmonai masks'")
        mask = load_mask_array(path)
        if shape is not None and mask.shape != tuple(shape):
            raise BusmonaiInputError(
                f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} px but the real masks are {shape[1]}x{shape[0]} px; "
                f"draw the masks with 'busmonai masks --size {shape[0]}'"
            )
        if not mask.any():
            raise BusmonaiInputError(f"{path}: empty generated mask; every tumor mask needs a lesion, re-draw it")
        masks.append(mask)
        labels.append(cls)
        rects.append(mask_bbox(mask))
        requested.append(box)
        files.append(path)
    if len({m.shape for m in masks}) > 1:
        raise BusmonaiInputError(f"{folder}: generated masks of mixed sizes ({files[0]} is {masks[0].shape}); "
                                 "draw them all with one --size")
    return MaskSet(np.stack(masks), labels, np.asarray(rects, dtype=np.int64), requested, files)


def _outlined(mask: np.ndarray, rect: Sequence[int]) -> np.ndarray:
    """uint8 tile: the mask (0 / 255) with its rectangle outlined in grey ``RECT_GREY`` one pixel
    outside the rectangle (clipped to the image), so that the outline never hides mask pixels."""
    tile = mask.astype(np.uint8) * 255
    h, w = tile.shape
    x0, y0 = max(int(rect[0]) - 1, 0), max(int(rect[1]) - 1, 0)
    x1, y1 = min(int(rect[2]), w - 1), min(int(rect[3]), h - 1)
    tile[y0, x0 : x1 + 1] = tile[y1, x0 : x1 + 1] = RECT_GREY
    tile[y0 : y1 + 1, x0] = tile[y0 : y1 + 1, x1] = RECT_GREY
    return tile


def write_comparison_sheet(real: MaskSet, generated: MaskSet, pairs: np.ndarray, path: Path | str,
                           columns: int = SHEET_COLUMNS, seed: int = 0) -> Path:
    """A PNG sheet: per class (benign first), a row of real masks above the generated masks for the
    same rectangles (the rectangle outlined in grey 128; empty cells grey 96).

    Up to ``columns`` generated masks per class are shown, at most one per requested rectangle
    (a seeded choice), each below its paired real mask.
    """
    from busmonai.visualize import save_grid

    rng = np.random.default_rng(seed)
    h, w = generated.masks.shape[1:]
    blank = np.full((h, w), SHEET_FILL, dtype=np.uint8)
    tiles: list[np.ndarray] = []
    for cls in CLASSES:
        members = [i for i, c in enumerate(generated.labels) if c == cls]
        if not members:
            continue
        first: dict[Any, int] = {}
        for i in rng.permutation(members):
            first.setdefault(generated.requested[i] or int(pairs[i]), int(i))
        keep = sorted(first.values())
        if len(keep) > columns:
            keep = rng.choice(keep, columns, replace=False).tolist()
        chosen = sorted(int(i) for i in keep)
        real_row = [_outlined(real.masks[pairs[i]], real.rects[pairs[i]]) for i in chosen]
        gen_row = [_outlined(generated.masks[i], generated.requested[i] or generated.rects[i]) for i in chosen]
        tiles += real_row + [blank] * (columns - len(real_row)) + gen_row + [blank] * (columns - len(gen_row))
    return save_grid(tiles, Path(path), ncols=columns, fill=SHEET_FILL)


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def evaluate_mask_realism(
    real_datalist: Path | str,
    generated_dir: Path | str,
    split: str | None = None,
    sheet: Path | str | None = None,
    seed: int = 0,
    frames: Sequence[str] = ("lesion", "image"),
) -> dict[str, Any]:
    """All readings of the module docstring for a folder of generated masks against a datalist.

    Each generated mask is paired with the real mask of its class whose rectangle best matches the
    rectangle it was drawn for (:func:`pair_with_real`; its own bounding rectangle when the index
    records none). The two-sample test, the curvature and the shape statistics compare the
    generated masks with their paired real masks; the real diversity reference uses all real
    masks of the split.

    Args:
        real_datalist: prepared datalist; its ``split`` (default ``training``) masks are the reference.
        generated_dir: see :func:`load_generated_masks`.
        split: datalist split of the real masks.
        sheet: PNG sheet path (default: ``<generated_dir>_realism.png`` beside ``generated_dir``);
            never inside ``generated_dir`` or the datalist's folder.
        seed: seed of the two-sample test and of the sampled pairs.
        frames: one two-sample test per entry, on what the classifier sees: ``lesion`` (the
            canonical crop: shape alone) and ``image`` (the whole mask: shape, size, position).

    Returns:
        JSON-ready dict: ``counts``, ``pairing``, ``two_sample`` (per frame), ``curvature`` (per class real /
        generated mean and std, and the malignant - benign ``gap``), ``shape`` (see
        :func:`compare_shape_statistics`), ``rect_iou`` (generated mask's bounding rectangle
        vs the requested one), ``diversity`` (``generated`` and ``real`` per class), ``sheet``.

    Raises:
        BusmonaiInputError: a missing datalist, an empty or missing generated folder, masks of
            another size than the real ones, a sheet path inside an input folder.
    """
    real_path, gen_dir = Path(real_datalist), Path(generated_dir)
    sheet_path = Path(sheet) if sheet is not None else gen_dir.parent / f"{gen_dir.resolve().name}_realism.png"
    real = load_real_masks(real_path, split)
    for folder, what in ((gen_dir, "the generated masks folder"), (real_path.parent, "the real datalist's folder")):
        if folder.is_dir() and _inside(sheet_path, folder):
            raise BusmonaiInputError(f"--sheet {sheet_path} lies inside {what} {folder}; write it elsewhere, e.g. "
                                     f"--sheet {gen_dir.resolve().parent / 'realism.png'}")
    generated = load_generated_masks(gen_dir, shape=real.masks.shape[1:])
    draw_rects = [r if r is not None else tuple(int(v) for v in own) for r, own in zip(generated.requested, generated.rects)]
    pairs, pair_ious = pair_with_real(generated.labels, draw_rects, real.labels, real.rects)
    paired_real = real.masks[pairs]
    paired_labels = [real.labels[i] for i in pairs]
    real_stats_all = {int(i): shape_statistics(real.masks[i]) for i in np.unique(pairs)}
    shape = compare_shape_statistics(paired_real, generated.masks, paired_labels, generated.labels,
                                     real_stats=[real_stats_all[int(i)] for i in pairs])
    two_sample = {frame: classifier_two_sample_test(real.masks, generated.masks, real.labels, generated.labels,
                                                    pairs=pairs, seed=seed, frame=frame) for frame in frames}
    curvature: dict[str, Any] = {}
    for cls, entry in shape.items():
        curvature[cls] = {"real": entry["curvature"]["real"], "generated": entry["curvature"]["generated"]}
    if all(c in curvature for c in CLASSES):
        curvature["gap"] = {side: curvature["malignant"][side]["mean"] - curvature["benign"][side]["mean"]
                            for side in ("real", "generated")}
    with_request = [i for i, r in enumerate(generated.requested) if r is not None]
    rect_iou: dict[str, Any] | None = None
    if with_request:
        values = np.array([bbox_iou(generated.rects[i], generated.requested[i]) for i in with_request])
        rect_iou = {**_summary(values), "frac_ge_0.7": float((values >= 0.7).mean())}
    diversity = {
        "generated": generated_diversity(generated.masks, generated.labels, generated.requested),
        "real": real_diversity(real.masks, real.labels, real.rects, seed=seed),
        "similar_rect_iou": SIMILAR_RECT_IOU,
    }
    sheet_written = write_comparison_sheet(real, generated, pairs, sheet_path, seed=seed)
    return {
        "real": str(real_path),
        "generated": str(gen_dir),
        "split": split or "training",
        "counts": {
            "real": {c: real.labels.count(c) for c in CLASSES},
            "generated": {c: generated.labels.count(c) for c in CLASSES},
            "size": list(real.masks.shape[1:]),
        },
        "pairing": {"rect_iou_mean": float(pair_ious.mean()), "exact": float((pair_ious >= 1.0 - 1e-9).mean()),
                    "real_masks_used": len(np.unique(pairs))},
        "two_sample": two_sample,
        "curvature": curvature,
        "shape": shape,
        "rect_iou": rect_iou,
        "diversity": diversity,
        "sheet": str(sheet_written),
    }


def realism_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """``(name, value)`` rows of the ``busmonai evaluate masks`` table for a result of
    :func:`evaluate_mask_realism`."""
    counts = result["counts"]
    classes = [c for c in CLASSES if c in result["shape"]]
    rows = [
        ("masks", f"real {sum(counts['real'].values())} ({result['split']}), generated "
                  + ", ".join(f"{c} {counts['generated'][c]}" for c in CLASSES if counts["generated"][c])
                  + f"; {counts['size'][1]}x{counts['size'][0]} px"),
        ("pairing", (f"rectangle IoU {result['pairing']['rect_iou_mean']:.3f} "
                     f"({100 * result['pairing']['exact']:.0f} % exact, "
                     f"{result['pairing']['real_masks_used']} real masks)")),
    ]
    for frame, ts in result["two_sample"].items():
        rows.append((f"two-sample AUC, {frame}",
                     f"{ts['auc']:.3f} (0.5 = indistinguishable, null sd {ts['null_std']:.3f}; "
                     + "".join(f"{c} {v:.3f}, " for c, v in ts["per_class"].items())
                     + f"held out {ts['n_test_real']} real / {ts['n_test_generated']} generated)"))
    for cls in classes:
        r, g = result["curvature"][cls]["real"], result["curvature"][cls]["generated"]
        rows.append((f"kappa {cls}", f"real {r['mean']:.4f} +- {r['std']:.4f}, generated {g['mean']:.4f} +- {g['std']:.4f}"))
    if "gap" in result["curvature"]:
        gap = result["curvature"]["gap"]
        rows.append(("class gap (M - B)", f"real {gap['real']:+.4f}, generated {gap['generated']:+.4f}"))
    for name in STATISTICS:
        cells = [f"{c} {result['shape'][c][name]['wasserstein']:.4f} "
                 f"({result['shape'][c][name]['wasserstein_rel']:.2f} sd)" for c in classes]
        rows.append((f"W1 {name}", ", ".join(cells)))
    iou = result["rect_iou"]
    rows.append(("rectangle IoU", f"{iou['mean']:.3f} +- {iou['std']:.3f} ({100 * iou['frac_ge_0.7']:.0f} % >= 0.7)"
                 if iou else "n/a (no requested rectangles recorded)"))
    div = result["diversity"]
    cells = []
    for cls in classes:
        g, r = div["generated"].get(cls), div["real"].get(cls)
        cells.append(f"{cls} generated {g['iou']:.3f} ({g['groups']} rectangles)" if g else f"{cls} generated n/a")
        cells[-1] += f" vs real {r['iou']:.3f} ({r['pairs']} pairs)" if r else " vs real n/a"
    rows.append(("diversity (IoU)", "; ".join(cells) + " (lower = more diverse)"))
    rows.append(("sheet", result["sheet"]))
    return rows
