"""Reading checkpoints with errors that name the config key and the fix (the bottom I/O layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from busmonai.errors import BusmonaiInputError


def read_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """Load a ``torch.save``d dict from ``path``; ``key`` is the config key that named it.

    Raises:
        BusmonaiInputError: the file is missing or is not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise BusmonaiInputError(
            f"{path}: checkpoint not found for '{key}'; train that stage first or pass --{key} PATH"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise BusmonaiInputError(f"{path}: not a readable checkpoint for '{key}' ({err}); pass another --{key}") from err
    if not isinstance(data, dict):
        raise BusmonaiInputError(f"{path}: '{key}' must hold a state dict, found {type(data).__name__}")
    return data


def write_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` ``state`` to ``path`` through a temporary sibling, so a crash never leaves a
    half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    torch.save(state, partial)
    partial.replace(path)
    return path


def load_weights(module: nn.Module, path: str | Path, key: str, entry: str | None = None) -> nn.Module:
    """Load a state dict into ``module`` strictly, or explain why it does not fit.

    Args:
        module: the configured network.
        path: checkpoint file.
        key: the config key that gave ``path`` (named in errors, e.g. ``autoencoder_ckpt``).
        entry: sub-dict of the checkpoint holding the state dict, if any.

    Raises:
        BusmonaiInputError: missing file, or weights that do not fit the configured network
            (the message lists a few missing / unexpected / mis-shaped keys).
    """
    state = read_checkpoint(path, key)
    if entry is not None:
        if entry not in state:
            raise BusmonaiInputError(f"{path}: '{key}' has no '{entry}' entry; is it the right stage's checkpoint?")
        state = state[entry]
    return fit_state_dict(module, state, path, key)


def fit_state_dict(module: nn.Module, state: dict[str, Any], path: str | Path, key: str) -> nn.Module:
    """Load ``state`` into ``module`` strictly, or raise naming a few keys that do not fit.

    Raises:
        BusmonaiInputError: missing, unexpected or mis-shaped tensors.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        details = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", mismatched))
            if keys
        )
        raise BusmonaiInputError(
            f"{path}: the '{key}' checkpoint does not fit the configured network ({details}); "
            f"use the network settings it was trained with, or pass the matching --{key}"
        )
    module.load_state_dict(state)
    return module
