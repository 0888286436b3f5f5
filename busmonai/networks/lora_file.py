"""The LoRA adapter file: ``adapter.safetensors`` with only the adapter weights, and its config.

The config (also written as ``adapter_config.json`` beside the weights, and kept in the
safetensors header) records the rank, alpha, targets, the training settings and a fingerprint of
the base UNet (:func:`busmonai.networks.lora.unet_signature`), so an adapter is refused by a UNet it
was not trained for. The adapters themselves: :mod:`busmonai.networks.lora`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from busmonai.errors import BusmonaiInputError
from busmonai.networks.lora import (
    ADAPTER_NAME, valid_names, adapter_info, apply_lora, linear_layers, lora_state_dict, merge, unet_of,
    unet_signature,
)

METADATA_KEY = "busmonai_lora"
"""Key of the adapter config in the safetensors header."""


def adapter_config_path(path: str | Path) -> Path:
    """``adapter_config.json`` beside ``adapter.safetensors`` (``{stem}_config.json``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}_config.json")


def save_adapter(model: nn.Module, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the adapter weights to ``path`` (safetensors; its header carries the config) and the
    config to ``adapter_config.json`` beside it, both atomically.

    Args:
        model: a model with an adapter (e.g. the EMA copy of the trained LDM).
        path: the ``.safetensors`` file to write.
        extra: more entries for the config (e.g. the training datalist and prompt domain).

    Returns:
        ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    config = {**adapter_info(model), **dict(extra or {})}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    config["n_parameters"] = int(sum(t.numel() for t in tensors.values()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(config)})
    tmp.replace(path)
    from busmonai.files import write_json_atomic

    write_json_atomic(config, adapter_config_path(path))
    return path


def read_adapter_config(path: str | Path | None) -> dict[str, Any]:
    """The config stored in an adapter file's header (``{}`` for ``path=None``).

    Raises:
        BusmonaiInputError: missing file, not a safetensors file, or not a busmonai adapter.
    """
    if path is None or path == "":
        return {}
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BusmonaiInputError(f"{path}: LoRA adapter not found for 'lora_adapter'; train bundles/lora first "
                                 "or pass --lora PATH to an adapter.safetensors")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise BusmonaiInputError(f"{path}: not a safetensors adapter file ({err})") from err
    if METADATA_KEY not in metadata:
        raise BusmonaiInputError(f"{path}: a safetensors file without a busmonai LoRA config; "
                                 "save adapters with busmonai.networks.lora.save_adapter")
    return json.loads(metadata[METADATA_KEY])


def adapter_digest(path: str | Path | None) -> str | None:
    """Short SHA-256 of an adapter file (recorded with synthetic datasets), None for no adapter.

    Raises:
        BusmonaiInputError: the file is missing or not a busmonai adapter.
    """
    if path is None or path == "":
        return None
    from busmonai.files import file_digest

    read_adapter_config(path)
    return file_digest(path)


def check_fingerprint(unet: nn.Module, config: Mapping[str, Any], source: str = "adapter",
                      base_digest: str | None = None) -> None:
    """Raise unless the adapter described by ``config`` was trained for this UNet.

    Checks, in order: every targeted layer exists as a Linear layer with the recorded
    ``(d_in, d_out)``; the UNet architecture signature; the base LDM checkpoint digest (when both
    are known).

    Raises:
        BusmonaiInputError: naming the missing or mis-shaped layers and the fix.
    """
    unet = unet_of(unet)
    layers = linear_layers(unet)
    recorded = {name: tuple(shape) for name, shape in config.get("layers", {}).items()}
    missing = [name for name in recorded if name not in layers]
    shaped = [f"{name} {list(recorded[name])} vs {[layers[name].in_features, layers[name].out_features]}"
              for name in recorded if name in layers
              and recorded[name] != (layers[name].in_features, layers[name].out_features)]
    if missing or shaped:
        details = "; ".join(f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                            for label, items in (("layers missing", missing), ("(d_in, d_out) differ", shaped))
                            if items)
        raise BusmonaiInputError(
            f"{source}: the LoRA adapter was trained for a different UNet ({details}); configure the UNet it was "
            f"trained with (unet_channels, unet_num_head_channels, ...) or train an adapter for this one. "
            f"This UNet's attention layers: {valid_names(unet)}"
        )
    signature = config.get("unet_signature")
    if signature and signature != unet_signature(unet):
        raise BusmonaiInputError(
            f"{source}: the LoRA adapter was trained for a different UNet (architecture signature {signature}, "
            f"this UNet {unet_signature(unet)}); use the UNet settings of its base LDM"
        )
    trained_on = config.get("base_ldm_digest")
    if trained_on and base_digest and trained_on != base_digest:
        raise BusmonaiInputError(
            f"{source}: the LoRA adapter was trained on the LDM checkpoint {trained_on}, but ldm_ckpt is "
            f"{base_digest}; pass the LDM it was trained on (--ldm_ckpt) or retrain bundles/lora"
        )


def load_adapter(model: nn.Module, path: str | Path | None, base_digest: str | None = None,
                 merge_weights: bool = False) -> nn.Module:
    """Apply the adapter saved at ``path`` to the UNet of ``model`` (nothing for ``path=None``).

    Args:
        model: a ``LatentDiffusionModel`` or UNet carrying the base weights (modified in place).
        path: an ``adapter.safetensors`` written by :func:`save_adapter`, or None.
        base_digest: :func:`busmonai.files.file_digest` of the base LDM checkpoint, to
            refuse an adapter trained on another checkpoint.
        merge_weights: fold ``B A`` into the base weights (:func:`merge`) after loading.

    Returns:
        ``model`` (frozen, in eval mode when an adapter was loaded).

    Raises:
        BusmonaiInputError: missing or foreign file, an adapter for a different UNet, or weights
            of the wrong rank.
    """
    if path is None or path == "":
        return model
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    config = read_adapter_config(path)
    unet = unet_of(model)
    check_fingerprint(unet, config, source=str(path), base_digest=base_digest)
    apply_lora(model, config["target_modules"], config["rank"], config["alpha"], config.get("dropout", 0.0),
               base_digest=config.get("base_ldm_digest"))
    unet.busmonai_lora.update({k: config[k] for k in ("targets", "unet_signature") if k in config})
    weights = load_file(str(path))
    expected = {k: tuple(v.shape) for k, v in lora_state_dict(model).items()}
    wrong = sorted(set(expected) ^ set(weights)) + [
        f"{k} {list(weights[k].shape)} vs {list(expected[k])}" for k in expected
        if k in weights and tuple(weights[k].shape) != expected[k]]
    if wrong:
        raise BusmonaiInputError(f"{path}: adapter weights do not fit its own config ({', '.join(wrong[:3])}); "
                                 "the file is damaged: save it again with save_adapter")
    device = next(unet.parameters()).device
    set_peft_model_state_dict(unet, {k: v.to(device) for k, v in weights.items()}, adapter_name=ADAPTER_NAME)
    model.eval()
    if merge_weights:
        merge(model)
    return model
