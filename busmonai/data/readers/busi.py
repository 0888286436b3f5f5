"""Reader for BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020).

Published layout (docs/method.md section 7)::

    Dataset_BUSI_with_GT/{benign,malignant,normal}/<cls> (k).png
                                                  /<cls> (k)_mask.png      first lesion
                                                  /<cls> (k)_mask_1.png    extra lesions, merged
"""

from __future__ import annotations

import re
from pathlib import Path

from busmonai.clinical.classes import IMAGE_CLASSES, TUMOR_CLASSES
from busmonai.data.readers.common import natural_key, require_dir
from busmonai.data.records import RawCase
from busmonai.errors import BusmonaiInputError

BUSI_CLASSES = IMAGE_CLASSES
_MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?$")


def read_busi(root: Path) -> list[RawCase]:
    """List BUSI cases under ``root`` (the folder holding ``benign/``, ``malignant/``, ``normal/``).

    ``root`` may also be a parent that contains ``Dataset_BUSI_with_GT``. ``normal/`` is optional
    (it is often left out); ``benign/`` or ``malignant/`` must exist.

    Raises:
        BusmonaiInputError: no class folder, a mask without its image, or a tumor image without
            any mask file.
    """
    root = require_dir(root)
    if not any((root / c).is_dir() for c in BUSI_CLASSES) and (root / "Dataset_BUSI_with_GT").is_dir():
        root = root / "Dataset_BUSI_with_GT"
    if not any((root / c).is_dir() for c in TUMOR_CLASSES):
        raise BusmonaiInputError(
            f"{root}: no 'benign/' or 'malignant/' folder; point --root at BUSI's "
            "'Dataset_BUSI_with_GT' folder (or a folder written by 'busmonai phantom')"
        )
    cases: list[RawCase] = []
    for cls in BUSI_CLASSES:
        folder = root / cls
        if not folder.is_dir():
            continue
        images: dict[str, Path] = {}
        masks: dict[str, list[Path]] = {}
        for path in folder.iterdir():
            if path.suffix.lower() != ".png" or not path.is_file():
                continue
            match = _MASK_RE.match(path.stem)
            if match:
                masks.setdefault(match["stem"], []).append(path)
            else:
                images[path.stem] = path
        for stem in masks:
            if stem not in images:
                raise BusmonaiInputError(
                    f"{masks[stem][0]}: mask without an image '{stem}.png' next to it; "
                    "restore the image or remove the stray mask"
                )
        for stem in sorted(images, key=natural_key):
            found = tuple(sorted(masks.get(stem, []), key=lambda p: natural_key(p.stem)))
            if cls != "normal" and not found:
                raise BusmonaiInputError(
                    f"{images[stem]}: {cls} image without a mask '{stem}_mask.png'; "
                    "add the mask or remove the image"
                )
            cases.append(
                RawCase(
                    image=images[stem],
                    masks=found,
                    cls=cls,
                    source=images[stem].relative_to(root).as_posix(),
                )
            )
    return cases
