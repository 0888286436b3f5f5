"""What a dataset reader yields: one raw case before it is loaded, resized and written.

Readers (``busmonai.data.readers``) know only the published layout of their dataset; they list
:class:`RawCase` objects. ``busmonai.data.prepare`` turns them into the datalist contract of
``docs/design.md`` (images, merged binary masks, labels, bboxes, attributes, splits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from busmonai.clinical.classes import ALL_CLASSES

CLASSES: tuple[str, ...] = ALL_CLASSES
"""Class names a case may carry. ``tumor`` is a lesion of unknown class (STU, unlabeled folders)."""

LABELS: dict[str, int | None] = {"benign": 0, "malignant": 1, "normal": None, "tumor": None}
"""The datalist ``label`` for each class: 0 benign, 1 malignant, ``None`` otherwise."""


@dataclass(frozen=True)
class RawCase:
    """One image of a published dataset with the files that hold its lesion masks.

    Args:
        image: path of the source image file.
        masks: mask files to merge by logical OR; empty for an image without a lesion (normal).
        cls: one of :data:`CLASSES`.
        source: the image's path relative to the dataset root, POSIX style (recorded in the
            datalist so a user can trace every item back to the original file).
        mask_mode: how a mask file becomes binary. ``"gray"``: grey level above half the
            file's maximum. ``"color"``: any channel above half the maximum (colour-coded
            masks such as BUS-UCLM's).
        resize_masks: if True a mask whose size differs from the image is resized (bilinear)
            to the image and thresholded at one half (STU's masks come at other sizes with
            anti-aliased grey edges); if False such a mask is an input error.
        attributes: descriptors published with the dataset (BrEaST's BI-RADS echogenicity and
            margin, mapped to ``{"echogenicity": ..., "boundary": ...}``); they take precedence
            over the attributes derived from the image.
    """

    image: Path
    masks: tuple[Path, ...]
    cls: str
    source: str
    mask_mode: str = "gray"
    resize_masks: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cls not in CLASSES:
            raise ValueError(f"RawCase class must be one of {CLASSES}, got {self.cls!r} for {self.image}")
        if self.mask_mode not in ("gray", "color"):
            raise ValueError(f"RawCase mask_mode must be 'gray' or 'color', got {self.mask_mode!r}")
