"""Reader for STU-Hospital (Zhuang et al., "An RDAU-NET model for lesion segmentation in breast
ultrasound images", PLoS ONE 14(8):e0221535, 2019).

42 images from the Shantou University hospital with lesion masks and no class labels.
Published layout (docs/method.md section 7)::

    <root>/Test_Image_<k>.png
    <root>/mask_<k>.png          or in any sub-folder of <root>

The masks come at other sizes than their images and with anti-aliased grey edges, so every
case is listed with ``resize_masks=True`` (``prepare`` resizes and thresholds them at one half).
Names are matched ignoring case; the number ``k`` pairs an image with its mask.
"""

from __future__ import annotations

import re
from pathlib import Path

from busmonai.data.readers.common import index_by_key, relative_source, require_dir, walk_images
from busmonai.data.records import RawCase
from busmonai.errors import BusmonaiInputError

_IMAGE_RE = re.compile(r"^test[ _-]?image[ _-]?(?P<k>\d+)$", re.IGNORECASE)
_MASK_RE = re.compile(r"^mask[ _-]?(?P<k>\d+)$", re.IGNORECASE)


def read_stu(root: Path) -> list[RawCase]:
    """List STU-Hospital cases (class ``"tumor"``), ordered by image number.

    Files anywhere under ``root`` are considered; other file names are ignored.

    Raises:
        BusmonaiInputError: no ``Test_Image_<k>`` file, two images or two masks with one number,
            an image without its mask, or a mask without its image.
    """
    root = require_dir(root)
    files = walk_images(root)
    images = [p for p in files if _IMAGE_RE.match(p.stem)]
    masks = [p for p in files if _MASK_RE.match(p.stem)]
    if not images:
        raise BusmonaiInputError(
            f"{root}: no 'Test_Image_<k>.png' images found (also searched sub-folders); point --root "
            "at the STU-Hospital folder"
        )
    image_index = index_by_key(images, lambda p: str(int(_IMAGE_RE.match(p.stem)["k"])), "image")
    mask_index = index_by_key(masks, lambda p: str(int(_MASK_RE.match(p.stem)["k"])), "mask")
    for k, mask in mask_index.items():
        if k not in image_index:
            raise BusmonaiInputError(
                f"{mask}: mask without an image 'Test_Image_{k}.png'; restore the image or remove the mask"
            )
    cases: list[RawCase] = []
    for k in sorted(image_index, key=int):
        image = image_index[k]
        if k not in mask_index:
            raise BusmonaiInputError(
                f"{image}: no mask 'mask_{k}.png' in {root} or its sub-folders; restore the mask or "
                "remove the image"
            )
        cases.append(
            RawCase(
                image=image,
                masks=(mask_index[k],),
                cls="tumor",
                source=relative_source(image, root),
                mask_mode="gray",
                resize_masks=True,
            )
        )
    return cases
