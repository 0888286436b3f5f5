"""Latents of the frozen autoencoder, encoded once and cached for diffusion training.

The docs/design.md probes show that re-encoding images through the autoencoder every step wastes
most of a CPU's budget; the latents of every training image (and of its horizontal flip, so the
augmentation needs no re-encoding) are computed once, stored in ``output_dir/latents.pt`` with a
fingerprint of the autoencoder weights, the datalist and the image size, and reused while the
fingerprint matches. ``scale_factor = 1 / std(z)`` (docs/method.md section 1) is measured on them.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.transforms import Compose
from torch import nn
from tqdm import tqdm

from busmonai.data.dataset import LoadPNGd
from busmonai.errors import BusmonaiInputError
from busmonai.checkpoint_io import write_checkpoint
from busmonai.files import file_digest


def _fingerprint(items: Sequence[dict[str, Any]], autoencoder_ckpt: str | Path, image_size: int, flips: bool,
                 extra_keys: Sequence[str]) -> str:
    payload = json.dumps(
        {"ae": file_digest(autoencoder_ckpt), "size": image_size, "flips": flips,
         "items": [[item["image"], *[item.get(k) for k in extra_keys]] for item in items]},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@torch.no_grad()
def encode_items(autoencoder: nn.Module, items: Sequence[dict[str, Any]], image_size: int,
                 device: torch.device | str = "cpu", batch_size: int = 32, flips: bool = True,
                 progress: bool = True) -> torch.Tensor:
    """Encode the images of ``items`` to posterior means ``z`` (N, C, h, w); with ``flips`` the
    horizontally flipped images follow as rows N..2N-1."""
    load = Compose([LoadPNGd(keys="image", image_size=image_size)])
    autoencoder.eval()
    chunks: list[torch.Tensor] = []
    for flip in ((False, True) if flips else (False,)):
        for start in tqdm(range(0, len(items), batch_size), desc="encode latents" + (" (flipped)" if flip else ""),
                          disable=not progress, unit="batch"):
            batch = torch.stack([load(dict(i))["image"] for i in items[start : start + batch_size]]).to(device)
            if flip:
                batch = torch.flip(batch, dims=[-1])
            mu, _ = autoencoder.encode(batch)
            chunks.append(mu.cpu())
    return torch.cat(chunks)


def cached_latents(autoencoder: nn.Module, autoencoder_ckpt: str | Path, items: Sequence[dict[str, Any]],
                   image_size: int, cache_path: str | Path, device: torch.device | str = "cpu",
                   flips: bool = True, extra_keys: Sequence[str] = ("prompt",), progress: bool = True) -> dict[str, Any]:
    """Latents of ``items`` from ``cache_path`` if its fingerprint matches, else encoded and saved.

    Returns:
        ``{"latents": (M, C, h, w), "index": (M,) item index of each row, "scale_factor": float,
        "fingerprint": str}`` where M = N (or 2N with flips).

    Raises:
        BusmonaiInputError: no items.
    """
    if not items:
        raise BusmonaiInputError("no training images to encode; check the datalist and the selected classes")
    cache_path = Path(cache_path)
    fingerprint = _fingerprint(items, autoencoder_ckpt, image_size, flips, extra_keys)
    cached = _read_cache(cache_path)
    if cached is not None and cached.get("fingerprint") == fingerprint:
        return cached
    latents = encode_items(autoencoder, items, image_size, device=device, flips=flips, progress=progress)
    std = float(latents.std())
    data = {
        "latents": latents,
        "index": torch.arange(len(items)).repeat(2 if flips else 1),
        "scale_factor": 1.0 / std if std > 0 else 1.0,
        "fingerprint": fingerprint,
    }
    write_checkpoint(data, cache_path)  # one partial file per process: DDP ranks encode side by side
    return data


def _read_cache(cache_path: Path) -> dict[str, Any] | None:
    """The cached latents, or None when there are none or the file is not a latent cache (a
    damaged or foreign file is only a cache: it is re-encoded and replaced, with a warning)."""
    if not cache_path.exists():
        return None
    try:
        cached = torch.load(cache_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        warnings.warn(f"{cache_path}: unreadable latent cache ({type(err).__name__}); encoding the images again",
                      stacklevel=3)
        return None
    if not isinstance(cached, dict) or not {"latents", "index", "scale_factor", "fingerprint"} <= set(cached):
        warnings.warn(f"{cache_path}: not a latent cache; encoding the images again", stacklevel=3)
        return None
    return cached


class LatentDataset(torch.utils.data.Dataset):
    """Rows of cached latents with the fields of their datalist item (e.g. ``prompt``, ``mask``).

    Args:
        cache: the dict returned by :func:`cached_latents`.
        items: the datalist items the cache was built from.
        keys: item fields to return beside ``latent``.
        transform: optional MONAI transform applied to the returned dict (e.g. loading masks).
        flip_keys: keys of image-like tensors (after ``transform``) to flip for flipped rows.
    """

    def __init__(self, cache: dict[str, Any], items: Sequence[dict[str, Any]], keys: Sequence[str] = ("prompt",),
                 transform: Any = None, flip_keys: Sequence[str] = ()) -> None:
        self.latents = cache["latents"]
        self.index = cache["index"]
        self.items = list(items)
        self.keys = tuple(keys)
        self.transform = transform
        self.flip_keys = tuple(flip_keys)
        self.n_items = len(self.items)

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def __getitem__(self, row: int) -> dict[str, Any]:
        item = self.items[int(self.index[row])]
        data: dict[str, Any] = {"latent": self.latents[row], **{k: item[k] for k in self.keys}}
        if self.transform is not None:
            data = self.transform(data)
        if row >= self.n_items:  # flipped copy
            for key in self.flip_keys:
                data[key] = torch.flip(data[key], dims=[-1])
        return data
