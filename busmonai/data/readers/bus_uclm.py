"""Reader for BUS-UCLM (Vallez et al., "BUS-UCLM: Breast ultrasound lesion segmentation dataset",
Mendeley Data 2024 / Scientific Data 2025).

Images from the University of Castilla-La Mancha: 264 with lesions (174 benign / 90 malignant,
docs/method.md section 7), the others normal. Published layout::

    <root>/images/<PATIENT>_<k>.png
    <root>/masks/<PATIENT>_<k>.png     RGB mask, same name: the lesion is painted green if
                                       benign, red if malignant; an all-black mask is normal

The class is read from the mask's colours, so this reader opens every mask. A channel counts
as "on" above half of 255. Pixels with green on and red off vote benign, red on and green off
vote malignant; if both colours occur the majority wins, and a near tie (the minority holding
at least :data:`TIE_FRACTION` of the coloured pixels) is an input error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from busmonai.data.readers.common import (
    descend,
    find_child,
    index_by_key,
    list_images,
    relative_source,
    require_dir,
)
from busmonai.data.records import RawCase
from busmonai.errors import BusmonaiInputError

TIE_FRACTION = 0.45
"""Share of the minority colour among the coloured pixels at which a mask is a near tie."""

IMAGE_DIRS = ("images", "image", "imgs")
MASK_DIRS = ("masks", "mask")


def mask_class(path: Path) -> str:
    """The class a BUS-UCLM colour mask encodes: ``"benign"``, ``"malignant"`` or ``"normal"``.

    Raises:
        BusmonaiInputError: the file cannot be read, it has lesion pixels that are neither green
            nor red, or green and red are a near tie.
    """
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except OSError as exc:
        raise BusmonaiInputError(f"{path}: cannot read the mask ({exc}); re-extract it from the archive") from exc
    on = rgb > 127
    red, green = on[..., 0], on[..., 1]
    n_green = int(np.count_nonzero(green & ~red))
    n_red = int(np.count_nonzero(red & ~green))
    if n_green == 0 and n_red == 0:
        if on.any():
            raise BusmonaiInputError(
                f"{path}: lesion pixels that are neither green (benign) nor red (malignant); "
                "BUS-UCLM masks code the class by colour: recolour the lesion or remove the case"
            )
        return "normal"
    if min(n_green, n_red) >= TIE_FRACTION * (n_green + n_red):
        raise BusmonaiInputError(
            f"{path}: green (benign, {n_green} px) and red (malignant, {n_red} px) lesion pixels are "
            "a near tie, so the class is ambiguous; repaint the mask in one colour"
        )
    return "benign" if n_green > n_red else "malignant"


def read_bus_uclm(root: Path) -> list[RawCase]:
    """List BUS-UCLM cases; the class of each comes from the colours of its mask.

    Normal cases (all-black masks) get ``masks=()``. Lesion cases keep their colour mask with
    ``mask_mode="color"``.

    Raises:
        BusmonaiInputError: ``images/`` or ``masks/`` missing, an image without its mask, or a
            mask whose colours give no class (see :func:`mask_class`).
    """
    root = descend(require_dir(root), lambda d: find_child(d, IMAGE_DIRS) is not None)
    image_dir = find_child(root, IMAGE_DIRS)
    mask_dir = find_child(root, MASK_DIRS)
    if image_dir is None or mask_dir is None:
        raise BusmonaiInputError(
            f"{root}: expected the folders 'images/' and 'masks/'; point --root at BUS-UCLM's folder"
        )
    images = list_images(image_dir)
    if not images:
        raise BusmonaiInputError(f"{image_dir}: no images; restore BUS-UCLM's images/ folder")
    index_by_key(images, lambda p: p.stem.lower(), "image")
    masks = index_by_key(list_images(mask_dir), lambda p: p.stem.lower(), "mask")
    cases: list[RawCase] = []
    for image in images:
        mask = masks.get(image.stem.lower())
        if mask is None:
            raise BusmonaiInputError(
                f"{image}: no mask '{mask_dir.name}/{image.name}'; restore the mask (all black for a "
                "normal image) or remove the image"
            )
        cls = mask_class(mask)
        cases.append(
            RawCase(
                image=image,
                masks=() if cls == "normal" else (mask,),
                cls=cls,
                source=relative_source(image, root),
                mask_mode="color",
            )
        )
    return cases
