"""Keep only the synthetic images that real-trained models agree with (``generate --filter``).

Every candidate image is scored by a segmenter and optionally a classifier trained on real
images only: the segmenter's lesion must agree with the conditioning mask (Dice at least
``min_dice``) and the classifier must not contradict the intended class (its probability of that
class at least ``min_class_prob``). Generation continues over a pool of candidates until each
class has its requested count. FreeMask (Yang et al., NeurIPS 2023) filters synthetic
segmentation pairs the same way with a real-trained model; whole-image filtering is done here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from busmonai.errors import BusmonaiInputError

__all__ = ["SyntheticFilter", "dice", "no_filter"]

Probability = Callable[[torch.Tensor], torch.Tensor]


def dice(prediction: np.ndarray, mask: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    p, m = np.asarray(prediction, bool), np.asarray(mask, bool)
    total = p.sum() + m.sum()
    return 1.0 if total == 0 else float(2.0 * (p & m).sum() / total)


@dataclass
class SyntheticFilter:
    """Scores and thresholds of the filter.

    Attributes:
        segmenter: ``images (B, 1, H, W) in [0, 1] -> P(lesion) (B, 1, H, W)``.
        classifier: ``images -> P(malignant)`` (``(B,)`` or ``(B, 1)``), or None.
        min_dice: lowest Dice of the segmenter's lesion with the mask that is kept.
        min_class_prob: lowest classifier probability of the intended class that is kept.
        pool: candidates planned per requested image (the most that is generated).
        digests: ``{"segmenter": ..., "classifier": ...}`` of the checkpoints, for the datalist.
    """

    segmenter: Probability
    classifier: Probability | None = None
    min_dice: float = 0.5
    min_class_prob: float = 0.2
    pool: float = 4.0
    digests: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_dice <= 1.0 or not 0.0 <= self.min_class_prob <= 1.0:
            raise BusmonaiInputError(f"--filter-min-dice {self.min_dice} and --filter-min-class-prob "
                                     f"{self.min_class_prob}: use values in [0, 1]")
        if not 1.0 <= self.pool <= 100.0:
            raise BusmonaiInputError(f"--filter-pool {self.pool}: plan 1 to 100 candidates per requested image")

    @torch.no_grad()
    def score(self, images: torch.Tensor, masks: Sequence[np.ndarray], labels: Sequence[int]) -> list[dict[str, Any]]:
        """``[{"dice", "class_prob", "kept"}]`` for a batch of images in [0, 1] with their masks and
        intended labels (0 benign, 1 malignant)."""
        images = images.float().cpu()
        lesion = torch.as_tensor(self.segmenter(images)).float().cpu().reshape(len(images), *images.shape[-2:])
        malignant = None
        if self.classifier is not None:
            malignant = torch.as_tensor(self.classifier(images)).float().cpu().reshape(len(images), -1)[:, 0]
        rows = []
        for k, (mask, label) in enumerate(zip(masks, labels)):
            d = dice(lesion[k].numpy() > 0.5, np.asarray(mask) > 0)
            p = None if malignant is None else float(malignant[k] if label == 1 else 1.0 - malignant[k])
            kept = d >= self.min_dice and (p is None or p >= self.min_class_prob)
            rows.append({"dice": round(d, 4), "class_prob": None if p is None else round(p, 4), "kept": bool(kept)})
        return rows

    def settings(self) -> dict[str, Any]:
        """The thresholds and checkpoint digests (part of the generation settings: a run resumed with
        another filter is refused)."""
        return {"min_dice": self.min_dice, "min_class_prob": self.min_class_prob, "pool": self.pool,
                "checkpoints": dict(self.digests or {})}

    def record(self, kept: int, rejected: int) -> dict[str, Any]:
        """What the datalist records of the filter."""
        return {"min_dice": self.min_dice, "min_class_prob": self.min_class_prob, "pool": self.pool,
                "kept": kept, "rejected": rejected, "checkpoints": dict(self.digests or {}),
                "classifier": self.classifier is not None}


def no_filter(classifier_ckpt: str | None = None) -> None:
    """No filter: the configuration without ``filter_segmenter_ckpt``.

    Raises:
        BusmonaiInputError: a classifier was given without the segmenter the filter needs.
    """
    if classifier_ckpt:
        raise BusmonaiInputError(f"--filter-classifier {classifier_ckpt} needs --filter SEGMENTER_MODEL_PT: the "
                                 "filter always checks the lesion with a segmenter trained on real images")
    return None
