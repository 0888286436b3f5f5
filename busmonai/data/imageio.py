"""Reading source images and masks, and writing PNGs without half-written files.

All pixel I/O of the data pipeline goes through here so that every reader gets the same
conversions: images become single-channel float arrays in [0, 255]; masks become boolean arrays
(merged across lesion files by logical OR, binarised at half the file's maximum). Every file is
opened by :func:`open_image`, which refuses a decompression bomb (a header claiming more pixels
than PIL's limit) as an input error naming the file, before decoding a pixel.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from busmonai.errors import BusmonaiInputError
from busmonai.files import user_mode


def open_image(path: str | Path, fix: str = "replace or remove the file") -> Image.Image:
    """Open and decode an image file, refusing files too large to decode safely.

    A PNG's header can claim any size (100000 x 100000 px in a few hundred bytes: a
    "decompression bomb"); decoding it would take tens of GB. An image over PIL's
    ``Image.MAX_IMAGE_PIXELS`` (about 89 M pixels unless changed) is refused before any pixel
    is decoded; ultrasound images have well under 1 M.

    Args:
        path: the image file.
        fix: what the message tells the user to do about an unreadable file.

    Raises:
        BusmonaiInputError: missing, unreadable, or too large a file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise BusmonaiInputError(f"{path}: file not found; restore it or remove its entry from the dataset")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        image = Image.open(path)
        width, height = image.size
        if limit is not None and width * height > limit:
            image.close()
            raise Image.DecompressionBombError(f"{width}x{height} px is over the limit of {limit} pixels")
        image.load()
    except Image.DecompressionBombError as err:
        raise BusmonaiInputError(
            f"{path}: too large to decode safely ({err}; a decompression bomb, or not an ultrasound image); "
            "replace or remove the file"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BusmonaiInputError(f"{path}: not a readable image ({err}); {fix}") from err
    return image



def load_gray(path: Path) -> np.ndarray:
    """Load an image as a single-channel float32 array in [0, 255] (colour is averaged to grey)."""
    image = open_image(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        peak = float(array.max()) or 1.0
        return array * (255.0 / peak)
    return np.asarray(image.convert("L"), dtype=np.float32)


def load_mask(path: Path, mode: str = "gray") -> np.ndarray:
    """Load a mask file as float32 in [0, 1] before thresholding.

    Args:
        path: the mask file.
        mode: ``"gray"`` uses the grey level; ``"color"`` the maximum over the colour channels
            (colour-coded masks, where a lesion is green or red).

    Returns:
        The mask scaled by its own maximum (an all-zero file stays zero).
    """
    image = open_image(path)
    if mode == "color":
        array = np.asarray(image.convert("RGB"), dtype=np.float32).max(axis=2)
    else:
        array = np.asarray(image.convert("L"), dtype=np.float32)
    peak = float(array.max())
    return array / peak if peak > 0 else array


def resize_gray(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float image (H, W) to ``size`` = (height, width) with bicubic interpolation."""
    height, width = size
    image = Image.fromarray(array.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a [0, 1] mask to ``size`` (bilinear) and threshold it at one half."""
    height, width = size
    image = Image.fromarray(mask.astype(np.float32), mode="F")
    resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    return resized >= 0.5


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Round and clip a [0, 255] float array to uint8."""
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 (H, W) array as a greyscale PNG atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            Image.fromarray(np.ascontiguousarray(array), mode="L").save(stream, format="PNG")
        os.chmod(tmp, user_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
