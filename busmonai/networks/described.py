"""Self-describing checkpoints: a network's constructor arguments saved beside its weights.

A stage that builds on another one (the LDM on the autoencoder, the ControlNet on both) must
rebuild the upstream network exactly as it was trained. Instead of copying the upstream bundle's
sizes into its own config, each bundle declares its networks once, as MONAI config components in
``callable`` mode (``{"_target_": "monai.networks.nets.AutoencoderKL", "_mode_": "callable", ...}``
parses to a ``functools.partial`` with the real arguments), and every ``model.pt`` it writes holds

``{"model": <state dict>, "arch": {"format": 1, "stage": "autoencoder", "parts": {...}}}``

where each part is the partial written back as a config dict (``{"_target_": ..., **kwargs}``),
the way diffusers keeps a ``config.json`` beside its weights. :func:`load_network` rebuilds a
part from such a file and loads the weights strictly; a checkpoint of the wrong stage, from an
older version, or whose weights do not fit, fails with a message naming the file and the fix.

Only targets under ``monai.networks.`` and ``busmonai.networks.`` are ever constructed from a
file, and no string from a file is evaluated, so a checkpoint cannot run code.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from busmonai.checkpoint_io import read_checkpoint, write_checkpoint
from busmonai.errors import BusmonaiInputError

__all__ = [
    "ARCH_ENTRY", "FORMAT", "MODEL_ENTRY", "ArchitectureRecord", "build", "build_part", "describe", "load_network",
    "part_description", "read_record",
]

FORMAT = 1
ARCH_ENTRY = "arch"
MODEL_ENTRY = "model"
ALLOWED_PREFIXES: tuple[str, ...] = ("monai.networks.", "busmonai.networks.")
TARGET_KEY = "_target_"


def _dotted(func: Any) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def describe(value: Any) -> Any:
    """Turn a (nested) ``functools.partial`` into plain data: ``{"_target_": "mod.Name", **kwargs}``.

    Lists and tuples become lists; numbers, strings, booleans and ``None`` stay as they are.

    Raises:
        ValueError: a value that is neither plain data nor a partial (e.g. a built module): declare
            the network with ``"_mode_": "callable"`` so its arguments stay visible.
    """
    if isinstance(value, functools.partial):
        if value.args:
            raise ValueError(f"{_dotted(value.func)}: give the network's arguments by name, not by position")
        return {TARGET_KEY: _dotted(value.func), **{k: describe(v) for k, v in value.keywords.items()}}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(
        f"cannot describe {type(value).__name__} in a network architecture; declare it as a config component "
        'with "_mode_": "callable"'
    )


def _locate(target: str) -> Any:
    from monai.utils import optional_import

    if not isinstance(target, str) or not target.startswith(ALLOWED_PREFIXES):
        raise BusmonaiInputError(
            f"network target {target!r} is not a MONAI or busmonai network; a checkpoint may only name "
            f"targets under {', '.join(ALLOWED_PREFIXES)}"
        )
    module, _, name = target.rpartition(".")
    obj, found = optional_import(module, name=name)
    if not found:
        # nested names (a class attribute) or a module path MONAI re-exports
        from pydoc import locate

        obj = locate(target)
        if obj is None:
            raise BusmonaiInputError(f"network target {target!r} does not exist in this installation")
    return obj


def _build(value: Any) -> Any:
    if isinstance(value, functools.partial):
        kwargs = {k: _build(v) for k, v in value.keywords.items()}
        return value.func(*value.args, **kwargs)
    if isinstance(value, Mapping) and TARGET_KEY in value:
        func = _locate(value[TARGET_KEY])
        return func(**{k: _build(v) for k, v in value.items() if k != TARGET_KEY})
    if isinstance(value, list):
        return [_build(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _build(v) for k, v in value.items()}
    return value


def build(factory: Any, **replace: Any) -> Any:
    """Construct a network from a partial or a description, building nested parts first.

    Args:
        factory: a ``functools.partial`` (a config component in ``callable`` mode) or a
            description from :func:`describe` / a checkpoint.
        **replace: top-level arguments to use as given instead of building them (e.g. a text
            encoder the config has already built).
    """
    if isinstance(factory, functools.partial):
        kwargs = {k: (replace[k] if k in replace else _build(v)) for k, v in factory.keywords.items()}
        return factory.func(*factory.args, **kwargs)
    if isinstance(factory, Mapping) and TARGET_KEY in factory:
        func = _locate(factory[TARGET_KEY])
        kwargs = {k: (replace[k] if k in replace else _build(v)) for k, v in factory.items() if k != TARGET_KEY}
        return func(**kwargs)
    raise ValueError(f"not a network factory or description: {type(factory).__name__}")


class ArchitectureRecord:
    """The ``arch`` entry of a stage's ``model.pt``: stage name plus each part's description.

    It has ``state_dict`` / ``load_state_dict`` so that MONAI's ``CheckpointSaver`` can save it
    beside the network (``save_dict: {"model": @network, "arch": @architecture}``).

    Args:
        stage: the bundle that wrote the checkpoint (``autoencoder``, ``ldm``, ...).
        settings: training settings a user of the weights needs (``{"image_size": 64}``).
        **parts: named partials, e.g. ``network=@network_arch``.
    """

    def __init__(self, stage: str, settings: Mapping[str, Any] | None = None, **parts: Any) -> None:
        if not parts:
            raise ValueError("an architecture record needs at least one part (network=...)")
        self.stage = stage
        self.settings = describe(dict(settings or {}))
        self.parts = {name: describe(part) for name, part in parts.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "stage": self.stage, "settings": self.settings, "parts": self.parts}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore: the record is fixed by the config that built the network."""


def save_network(network: nn.Module, record: ArchitectureRecord, path: str | Path) -> Path:
    """Write a self-describing ``model.pt`` (``{"model": weights, "arch": record}``) for a network
    that is not trained by an engine (the parameter-free space-to-depth autoencoder)."""
    return write_checkpoint({MODEL_ENTRY: network.state_dict(), ARCH_ENTRY: record.state_dict()}, path)


def read_record(path: str | Path, key: str, stage: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a self-describing checkpoint of ``stage``; return ``(record, full checkpoint)``.

    Args:
        path: the ``model.pt``.
        key: the config key that named it (in messages, e.g. ``autoencoder_ckpt``).
        stage: the stage it must come from.

    Raises:
        BusmonaiInputError: missing or unreadable file, no architecture record (written before
            checkpoints described themselves, or not by busmonai), or another stage's checkpoint.
    """
    state = read_checkpoint(path, key)
    record = state.get(ARCH_ENTRY)
    if not isinstance(record, Mapping) or not isinstance(record.get("parts"), Mapping):
        raise BusmonaiInputError(
            f"{path}: '{key}' has no architecture record; it was not written by the {stage} bundle of this "
            f"busmonai version: retrain bundles/{stage} or pass its model.pt with --{key}"
        )
    if record.get("format") != FORMAT:
        raise BusmonaiInputError(
            f"{path}: architecture record format {record.get('format')!r} is not {FORMAT}; retrain bundles/{stage} "
            "with this busmonai version"
        )
    if record.get("stage") != stage:
        raise BusmonaiInputError(
            f"{path}: '{key}' holds a {record.get('stage')!r} checkpoint, not a {stage!r} one; pass the model.pt "
            f"of bundles/{stage} with --{key}"
        )
    if not isinstance(state.get(MODEL_ENTRY), Mapping):
        raise BusmonaiInputError(f"{path}: '{key}' has no '{MODEL_ENTRY}' weights; retrain bundles/{stage}")
    return dict(record), state


def recorded_settings(path: str | Path, key: str, stage: str) -> dict[str, Any]:
    """The training settings a stage's checkpoint records (``image_size``; the classifier's
    validation ``holdout`` and ``seed``), so that later steps use what the training used.

    Raises:
        BusmonaiInputError: see :func:`read_record`.
    """
    record, _ = read_record(path, key, stage)
    return dict(record.get("settings") or {})


def initialised(network: nn.Module, path: str | Path | None, key: str, stage: str) -> nn.Module:
    """``network`` with the weights of a same-stage checkpoint when ``path`` is given (fine-tuning a
    network pretrained elsewhere, e.g. on synthetic images), else unchanged.

    Raises:
        BusmonaiInputError: see :func:`read_record`; weights that do not fit ``network``.
    """
    if not path:
        return network
    from busmonai.checkpoint_io import fit_state_dict

    _, state = read_record(path, key, stage)
    return fit_state_dict(network, dict(state[MODEL_ENTRY]), path, key)


def part_description(path: str | Path, key: str, stage: str, part: str = "network") -> dict[str, Any]:
    """The description of one part of a stage's checkpoint (to read its sizes).

    Raises:
        BusmonaiInputError: see :func:`read_record`, or no such part.
    """
    record, _ = read_record(path, key, stage)
    if part not in record["parts"]:
        raise BusmonaiInputError(f"{path}: the {stage} checkpoint has no '{part}' part; retrain bundles/{stage}")
    return dict(record["parts"][part])


def load_network(path: str | Path, key: str, stage: str, part: str = "network", weights: bool = True,
                 **replace: Any) -> nn.Module:
    """Rebuild a stage's network from its ``model.pt`` and load the weights strictly.

    Args:
        path: the checkpoint.
        key: the config key that named it (``ldm_ckpt``).
        stage: the stage it must come from.
        part: which described part to build (``network``; ``text_encoder`` of an LDM).
        weights: load the ``model`` weights (only for the ``network`` part).
        **replace: constructor arguments to use as given (see :func:`build`).

    Raises:
        BusmonaiInputError: see :func:`read_record`; weights that do not fit the recorded
            architecture (a corrupt or hand-edited file).
    """
    from busmonai.checkpoint_io import fit_state_dict

    record, state = read_record(path, key, stage)
    if part not in record["parts"]:
        raise BusmonaiInputError(f"{path}: the {stage} checkpoint has no '{part}' part; retrain bundles/{stage}")
    try:
        network = build(record["parts"][part], **replace)
    except (TypeError, ValueError) as err:
        raise BusmonaiInputError(f"{path}: the recorded {stage} architecture cannot be built ({err}); "
                                 f"retrain bundles/{stage}") from err
    if weights:
        fit_state_dict(network, state[MODEL_ENTRY], path, key)
    return network


def build_part(path: str | Path, key: str, stage: str, part: str, **replace: Any) -> Any:
    """Build a described part of a stage's checkpoint without weights (an LDM's text encoder or
    noise scheduler). See :func:`load_network`."""
    return load_network(path, key, stage, part, weights=False, **replace)
