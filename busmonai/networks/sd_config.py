"""Stable Diffusion ``config.json`` files -> MONAI constructor arguments, and the options refused.

Used by :mod:`busmonai.networks.stable_diffusion` (its docstring lists what converts and why). Each
``*_FIXED`` table holds the diffusers options MONAI's networks have only one value for: option ->
(the value accepted, why). An absent option takes diffusers' default, which is that value; an
option no table knows is refused unless it is null or false.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from busmonai.errors import BusmonaiInputError

__all__ = [
    "CLASS_NAMES", "CONTROLNET_FIXED", "UNET_FIXED", "VAE_FIXED", "controlnet_kwargs", "read_part", "unet_kwargs",
    "vae_kwargs",
]

CLASS_NAMES = {"vae": "AutoencoderKL", "unet": "UNet2DConditionModel", "controlnet": "ControlNetModel"}
_MIRROR = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}

_ENCODER_FIXED: dict[str, tuple[Any, str]] = {
    "addition_embed_type": (None, "SD-XL's added text/time embeddings have no counterpart in MONAI's UNet"),
    "class_embed_type": (None, "MONAI's UNet has no class embedding of this kind"),
    "num_class_embeds": (None, "class-conditional SD models are not supported"),
    "encoder_hid_dim": (None, "MONAI's UNet has no projection of the text embeddings"),
    "encoder_hid_dim_type": (None, "MONAI's UNet has no projection of the text embeddings"),
    "projection_class_embeddings_input_dim": (None, "MONAI's UNet has no class projection"),
    "time_cond_proj_dim": (None, "MONAI's UNet has no guidance embedding (LCM)"),
    "flip_sin_to_cos": (True, "MONAI's timestep embedding is (cos, sin)"),
    "freq_shift": (0, "MONAI's timestep frequencies are exp(-ln(1e4) i / (d / 2))"),
    "downsample_padding": (1, "MONAI's UNet downsamples with padding 1"),
    "mid_block_scale_factor": (1, "MONAI's middle block does not rescale"),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", "MONAI's middle block is ResNet, cross-attention, ResNet"),
    "act_fn": ("silu", "MONAI's UNet uses SiLU"),
    "resnet_time_scale_shift": ("default", "MONAI's ResNets add the time embedding (no scale-shift)"),
    "attention_type": ("default", "MONAI's transformer blocks have no gated attention"),
    "class_embeddings_concat": (False, "MONAI's UNet has no class embedding"),
    "dropout": (0.0, "MONAI's UNet ResNets have no dropout"),
}
UNET_FIXED: dict[str, tuple[Any, str]] = {
    **_ENCODER_FIXED,
    "center_input_sample": (False, "MONAI's UNet takes the sample as it is"),
    "dual_cross_attention": (False, "MONAI's transformer has one cross-attention"),
    "resnet_skip_time_act": (False, "MONAI's ResNets apply SiLU to the time embedding"),
    "resnet_out_scale_factor": (1.0, "MONAI's ResNets do not rescale"),
    "time_embedding_type": ("positional", "MONAI's timestep embedding is sinusoidal"),
    "time_embedding_dim": (None, "MONAI's time embedding is 4 x the first level's channels"),
    "time_embedding_act_fn": (None, "MONAI's time embedding has no extra activation"),
    "timestep_post_act": (None, "MONAI's time embedding has no extra activation"),
    "conv_in_kernel": (3, "MONAI's input convolution is 3 x 3"),
    "conv_out_kernel": (3, "MONAI's output convolution is 3 x 3"),
    "mid_block_only_cross_attention": (None, "MONAI's middle block has self- and cross-attention"),
    "cross_attention_norm": (None, "MONAI's cross-attention has no norm of the context"),
    "reverse_transformer_layers_per_block": (None, "MONAI has one transformer depth for every level"),
}
"""UNet options (SD v1.5's values) MONAI's ``DiffusionModelUNet`` has no other value for: option -> (value, why)."""
CONTROLNET_FIXED: dict[str, tuple[Any, str]] = {
    **_ENCODER_FIXED,
    "controlnet_conditioning_channel_order": ("rgb", "MONAI's ControlNet does not flip BGR conditioning"),
    "global_pool_conditions": (False, "MONAI's ControlNet returns full-size residuals"),
}
"""The same for ``ControlNetModel``."""
VAE_FIXED: dict[str, tuple[Any, str]] = {
    "act_fn": ("silu", "MONAI's autoencoder uses SiLU"),
    "mid_block_add_attention": (True, "MONAI's middle block without attention drops its ResNets too"),
    "use_quant_conv": (True, "the converted autoencoder keeps SD's 1 x 1 quant convolutions"),
    "use_post_quant_conv": (True, "the converted autoencoder keeps SD's 1 x 1 quant convolutions"),
}
"""VAE options MONAI's ``AutoencoderKL`` layout has no other value for."""
_IGNORED = frozenset({"sample_size", "scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast",
                      "addition_embed_type_num_heads", "addition_time_embed_dim"})


# ------------------------------------------------------------------ config.json -> MONAI arguments
def read_part(path: str | Path, part: str) -> tuple[dict[str, Any], Path]:
    """``(config, config file)`` of ``path/part`` (a ControlNet folder may hold config.json itself)."""
    root = Path(path)
    if not root.is_dir():
        raise BusmonaiInputError(f"Stable Diffusion folder {root} does not exist (sd_path): download the model's "
                                 "diffusers folder (vae/, unet/, text_encoder/, tokenizer/) yourself and pass it")
    file = root / "config.json" if part == "controlnet" and (root / "config.json").is_file() else root / part / "config.json"
    if not file.is_file():
        raise BusmonaiInputError(
            f"{file} is missing: {root} must be a Stable Diffusion folder in diffusers' layout with {part}/config.json "
            "and its weights (single-file .ckpt / .safetensors checkpoints are not read)"
        )
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise BusmonaiInputError(f"{file}: not a readable JSON config ({error})") from error
    if not isinstance(config, dict):
        raise BusmonaiInputError(f"{file}: expected a JSON object, found {type(config).__name__}")
    name = config.get("_class_name", CLASS_NAMES[part])
    if name != CLASS_NAMES[part]:
        raise BusmonaiInputError(f"{file}: _class_name {name!r} is not diffusers' {CLASS_NAMES[part]}; only "
                                 f"{CLASS_NAMES[part]} folders convert to MONAI's network")
    return config, file


def _same(value: Any, wanted: Any) -> bool:
    if isinstance(value, bool) or isinstance(wanted, bool):
        return value is wanted
    return bool(value == wanted)


def _check(config: Mapping[str, Any], file: Path, fixed: Mapping[str, tuple[Any, str]], mapped: set[str]) -> None:
    for key, (wanted, why) in fixed.items():
        if key in config and not _same(config[key], wanted):
            raise BusmonaiInputError(f"{file}: {key} = {config[key]!r} cannot be converted ({why}; only {wanted!r})")
    unknown = sorted(k for k, v in config.items() if not k.startswith("_") and k not in fixed and k not in mapped
                     and k not in _IGNORED and v not in (None, False))
    if unknown:
        raise BusmonaiInputError(f"{file}: unknown option(s) {', '.join(unknown)}: this converter does not know what "
                                 "they change, so it refuses the folder")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _per_level(value: Any, levels: int, key: str, file: Path) -> list[int]:
    values = [value] * levels if not isinstance(value, (list, tuple)) else list(value)
    if len(values) != levels or not all(_integer(v) for v in values):
        raise BusmonaiInputError(f"{file}: {key} = {value!r} must be an integer or one per level ({levels})")
    return values


def _one(value: Any, key: str, file: Path) -> int:
    """One integer for every level (MONAI has a single value)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or not all(_integer(v) for v in values) or len(set(values)) != 1:
        raise BusmonaiInputError(f"{file}: {key} = {value!r} is not one integer for every level; MONAI has one value "
                                 "for all levels")
    return int(values[0])


_ENCODER_MAPPED = {"in_channels", "block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
                   "attention_head_dim", "num_attention_heads", "norm_num_groups", "norm_eps",
                   "transformer_layers_per_block", "use_linear_projection", "upcast_attention", "only_cross_attention"}


def encoder_kwargs(config: Mapping[str, Any], file: Path) -> dict[str, Any]:
    """Arguments shared by ``DiffusionModelUNet`` and ``ControlNet`` (diffusers' defaults where absent)."""
    channels = list(config.get("block_out_channels", (320, 640, 1280, 1280)))
    levels = len(channels)
    down = list(config.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)))
    if len(down) != levels or any(t not in _MIRROR for t in down):
        raise BusmonaiInputError(f"{file}: down_block_types {down} cannot be converted: MONAI has "
                                 f"CrossAttnDownBlock2D / DownBlock2D, one per block_out_channels entry")
    only_cross = config.get("only_cross_attention", False)
    if any(only_cross) if isinstance(only_cross, list) else only_cross:
        raise BusmonaiInputError(f"{file}: only_cross_attention cannot be converted (MONAI's transformer has self-attention)")
    heads = _per_level(config.get("num_attention_heads") or config.get("attention_head_dim", 8), levels,
                       "attention_head_dim", file)  # diffusers' attention_head_dim is the number of heads
    if any(c % h for c, h in zip(channels, heads)):
        raise BusmonaiInputError(f"{file}: block_out_channels {channels} are not divisible by the heads {heads}")
    return {
        "spatial_dims": 2, "in_channels": int(config.get("in_channels", 4)), "channels": channels,
        "attention_levels": [t == "CrossAttnDownBlock2D" for t in down],
        "num_res_blocks": _per_level(config.get("layers_per_block", 2), levels, "layers_per_block", file),
        "num_head_channels": [c // h for c, h in zip(channels, heads)],
        "norm_num_groups": int(config.get("norm_num_groups", 32)), "norm_eps": float(config.get("norm_eps", 1e-5)),
        "with_conditioning": True,
        "transformer_num_layers": _one(config.get("transformer_layers_per_block", 1), "transformer_layers_per_block", file),
        "cross_attention_dim": _one(config.get("cross_attention_dim", 1280), "cross_attention_dim", file),
        "upcast_attention": bool(config.get("upcast_attention", False)),
    }


def unet_kwargs(config: Mapping[str, Any], file: Path) -> dict[str, Any]:
    _check(config, file, UNET_FIXED, _ENCODER_MAPPED | {"out_channels", "up_block_types"})
    kwargs = encoder_kwargs(config, file)
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in kwargs["attention_levels"]]
    up = list(config.get("up_block_types", [_MIRROR[t] for t in reversed(down)]))
    if up != [_MIRROR[t] for t in reversed(down)]:
        raise BusmonaiInputError(f"{file}: up_block_types {up} do not mirror down_block_types {down}; MONAI's UNet "
                                 "puts attention at the same levels on both paths")
    return {**kwargs, "out_channels": int(config.get("out_channels", 4))}


def controlnet_kwargs(config: Mapping[str, Any], file: Path) -> dict[str, Any]:
    _check(config, file, CONTROLNET_FIXED, _ENCODER_MAPPED | {"conditioning_channels", "conditioning_embedding_out_channels"})
    return {**encoder_kwargs(config, file),
            "conditioning_embedding_in_channels": int(config.get("conditioning_channels", 3)),
            "conditioning_embedding_num_channels": list(config.get("conditioning_embedding_out_channels", (16, 32, 96, 256)))}


def vae_kwargs(config: Mapping[str, Any], file: Path) -> dict[str, Any]:
    _check(config, file, VAE_FIXED, {"in_channels", "out_channels", "down_block_types", "up_block_types",
                                     "block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups"})
    channels = list(config.get("block_out_channels", (64,)))
    for key, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = list(config.get(key, (block,)))
        if types != [block] * len(channels):
            raise BusmonaiInputError(f"{file}: {key} {types} cannot be converted: MONAI's autoencoder has one "
                                     f"{block} (no attention) per block_out_channels entry")
    return {
        "spatial_dims": 2, "in_channels": int(config.get("in_channels", 3)), "out_channels": int(config.get("out_channels", 3)),
        "channels": channels, "num_res_blocks": int(config.get("layers_per_block", 1)),
        "attention_levels": [False] * len(channels), "latent_channels": int(config.get("latent_channels", 4)),
        "norm_num_groups": int(config.get("norm_num_groups", 32)), "norm_eps": 1e-6,
        "with_encoder_nonlocal_attn": True, "with_decoder_nonlocal_attn": True,
    }
