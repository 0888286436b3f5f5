"""Label fidelity: does a classifier trained on real images recognise the intended class?

Label fidelity is the area under the ROC curve of a benign-vs-malignant classifier (trained on
real images: the downstream classification bundle) on generated images scored against the
labels they were generated with. 0.5 means the generator's classes are indistinguishable to the
classifier, 1 that every malignant image scores above every benign one.

The AUC is computed with the rank (Mann-Whitney U) formula, no scikit-learn needed:
``AUC = (R_1 - n_1 (n_1 + 1) / 2) / (n_1 n_0)``, where ``R_1`` is the sum of the ranks of the
``n_1`` positive scores among all scores, ties getting their average rank (midranks); this is
the probability that a random positive outranks a random negative, counting ties as one half.

The classifier is a callable ``predict(images) -> P(malignant)`` on ``(B, 1, H, W)`` float
images in [0, 1] returning ``(B,)`` or ``(B, 1)`` probabilities; from the command line, a
TorchScript file (the classification bundle's ``ckpt_export`` output) or a state dict with its
bundle config (:func:`busmonai.bundles.load_bundle_network`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from busmonai.clinical.classes import TUMOR_CLASSES
from busmonai.errors import BusmonaiInputError
from busmonai.metrics.sources import datalist_items, item_class, load_image_stack

Classifier = Callable[[torch.Tensor], torch.Tensor]
"""``(B, 1, H, W)`` images in [0, 1] -> ``(B,)`` or ``(B, 1)`` probabilities of malignancy."""
POSITIVE_CLASS = "malignant"


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank formula with midranks for ties.

    Args:
        labels: 0 / 1 (or boolean) true labels, 1 = positive (malignant).
        scores: higher = more positive.

    Raises:
        BusmonaiInputError: different lengths, labels other than 0 / 1, or only one class.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise BusmonaiInputError(f"AUC needs one score per label, got shapes {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise BusmonaiInputError("AUC labels must be 0 (benign) or 1 (malignant)")
    if not np.isfinite(s).all():
        raise BusmonaiInputError("AUC scores must be finite")
    positive = y.astype(bool)
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        raise BusmonaiInputError(f"AUC needs both classes, got {n1} malignant and {n0} benign images")
    ranks = rankdata(s)  # average ranks of ties
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def predict_batch(images: np.ndarray, classifier: Classifier, batch_size: int = 16) -> np.ndarray:
    """``(N,)`` probabilities for ``(N, H, W)`` uint8 (or [0, 1] float) images."""
    data = np.asarray(images)
    scale = 255.0 if data.dtype == np.uint8 else 1.0
    out = []
    for start in range(0, len(data), batch_size):
        batch = torch.from_numpy(data[start : start + batch_size].astype(np.float32) / scale)[:, None]
        with torch.no_grad():
            prob = torch.as_tensor(classifier(batch)).detach().float().cpu().reshape(len(batch), -1)
        if prob.shape[1] != 1:
            raise BusmonaiInputError(
                f"the classifier returned {prob.shape[1]} values per image; it must return P(malignant) "
                "(use a softmax wrapper with the malignant channel)"
            )
        out.append(prob[:, 0].numpy())
    return np.concatenate(out).astype(np.float64)


def label_fidelity(
    images: np.ndarray, labels: Sequence[int] | np.ndarray, classifier: Classifier, batch_size: int = 16
) -> dict[str, Any]:
    """AUC (and accuracy at 0.5) of ``classifier`` on images with their intended labels.

    Returns:
        ``{"auc", "accuracy", "n", "n_benign", "n_malignant", "scores"}``.
    """
    y = np.asarray(labels, dtype=np.int64)
    scores = predict_batch(images, classifier, batch_size)
    return {
        "auc": roc_auc(y, scores),
        "accuracy": float(((scores >= 0.5) == (y == 1)).mean()),
        "n": int(len(y)),
        "n_benign": int((y == 0).sum()),
        "n_malignant": int((y == 1).sum()),
        "scores": scores.tolist(),
    }


def datalist_fidelity(
    datalist: Path | str, classifier: Classifier, split: str | None = None, batch_size: int = 16
) -> dict[str, Any]:
    """:func:`label_fidelity` on the benign and malignant items of a (synthetic) datalist."""
    items = datalist_items(datalist, split, classes=TUMOR_CLASSES)
    classes = [item_class(i) for i in items]
    unknown = [i["image"] for i, c in zip(items, classes) if c is None]
    if unknown:
        raise BusmonaiInputError(
            f"{datalist}: item {unknown[0]} has neither 'class' nor 'label'; label fidelity needs the intended label"
        )
    images = load_image_stack([Path(i["image"]) for i in items], name=f"images of {datalist}")
    result = label_fidelity(images, [int(c == POSITIVE_CLASS) for c in classes], classifier, batch_size)
    result["images"] = [i["image"] for i in items]
    return result
