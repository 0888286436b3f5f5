"""Reader for QAMEBI (Qaisar Abbas Mendeley breast ultrasound images; 232 images, 109 benign /
123 malignant, docs/method.md section 7).

Its layout is not verified here (no copy was at hand), so it is read as a per-class folder tree::

    <root>/Benign/...      any depth; class folders matched ignoring case
    <root>/Malignant/...
    <root>/Normal/...      optional; its images need no mask

with the lesion masks of each image either beside it, named with a mask marker
(``<stem>_mask.png``, ``<stem>_Mask.png``, ``<stem> mask.png``, ``mask_<stem>.png``; extra lesions
``<stem>_mask_1.png``), or in a sibling ``masks/`` folder of an ``images/`` folder (same stem,
marker optional). ``<root>`` may also be the folder that contains the dataset's folder.
"""

from __future__ import annotations

from pathlib import Path

from busmonai.clinical.classes import IMAGE_CLASSES, TUMOR_CLASSES
from busmonai.data.readers.common import (
    descend,
    find_child,
    pair_images_and_masks,
    raise_stray_mask,
    relative_source,
    require_dir,
    walk_images,
)
from busmonai.data.records import RawCase
from busmonai.errors import BusmonaiInputError

QAMEBI_CLASSES = IMAGE_CLASSES


def _has_class_folder(folder: Path) -> bool:
    """True if ``folder`` has a ``benign/`` or ``malignant/`` folder (any case)."""
    return find_child(folder, TUMOR_CLASSES) is not None


def read_qamebi(root: Path) -> list[RawCase]:
    """List QAMEBI cases class folder by class folder, images in natural path order.

    Raises:
        BusmonaiInputError: no ``benign/`` or ``malignant/`` folder, a benign or malignant image
            without a mask, or a mask that matches no image.
    """
    root = descend(require_dir(root), _has_class_folder)
    if not _has_class_folder(root):
        raise BusmonaiInputError(
            f"{root}: no 'benign/' or 'malignant/' folder; point --root at the QAMEBI folder that "
            "holds one folder per class"
        )
    cases: list[RawCase] = []
    for cls in QAMEBI_CLASSES:
        folder = find_child(root, (cls,))
        if folder is None:
            continue
        images, masks_of, stray = pair_images_and_masks(walk_images(folder))
        if stray:
            raise_stray_mask(stray[0])
        for image in images:
            masks = masks_of.get(image, ())
            if cls != "normal" and not masks:
                raise BusmonaiInputError(
                    f"{image}: {cls} image without a mask (expected '{image.stem}_mask{image.suffix}' "
                    "beside it or a same-named file in the sibling 'masks/' folder); add the mask "
                    "or remove the image"
                )
            cases.append(RawCase(image=image, masks=masks, cls=cls, source=relative_source(image, root)))
    return cases
