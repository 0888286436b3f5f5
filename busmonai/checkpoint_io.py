"""Reading checkpoints with errors that name the config key and the fix, and writing them
atomically (the bottom I/O layer)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from busmonai.errors import BusmonaiInputError
from busmonai.files import PARTIAL_SUFFIX, partial_prefix, remove_stale_partials


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


def write_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` ``state`` to ``path`` so that ``path`` always holds a complete checkpoint.

    The bytes go to a new hidden sibling ``.NAME.<pid>.<random>.partial``, are flushed and
    ``fsync``'d, and the sibling is then renamed over ``path`` (``os.replace``): a crash, a kill or
    a full disk during the write leaves the previous ``path`` (or none) and at most a stray
    ``.partial`` file, never a truncated checkpoint under the final name. The temporary file is
    removed when the write raises; one left by a killed earlier process is removed by the next
    write (:func:`busmonai.files.remove_stale_partials`). The file is created with mode ``0o666``
    less the umask (0644 under umask 022), as ``open()`` would, not the 0600 of ``tempfile.mkstemp``.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    partial = path.with_name(f"{partial_prefix(path)}{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")
    # O_EXCL: never write through an existing file or link; 0o666: the kernel applies the umask
    handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


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


def state_dict_mismatch(module: nn.Module, state: Mapping[str, Any]) -> str:
    """Why ``state`` does not load strictly into ``module``: a few missing / unexpected / mis-shaped
    keys, or ``""`` when it fits."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    return "; ".join(
        f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", mismatched))
        if keys
    )


def fit_state_dict(module: nn.Module, state: dict[str, Any], path: str | Path, key: str) -> nn.Module:
    """Load ``state`` into ``module`` strictly, or raise naming a few keys that do not fit.

    Raises:
        BusmonaiInputError: missing, unexpected or mis-shaped tensors.
    """
    details = state_dict_mismatch(module, state)
    if details:
        raise BusmonaiInputError(
            f"{path}: the '{key}' checkpoint does not fit the configured network ({details}); "
            f"use the network settings it was trained with, or pass the matching --{key}"
        )
    module.load_state_dict(state)
    return module
