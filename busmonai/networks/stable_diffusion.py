"""Stable Diffusion weights from a local folder as MONAI networks (the paper profile's starting point).

CP (MICCAI 2025) trains its ControlNet on Stable Diffusion v1.5, and its journal extension (Medical
Image Analysis 2025) fine-tunes the same model at 256 px (docs/method.md section 2). This module
turns a *local* Stable Diffusion folder in diffusers' layout into MONAI networks; nothing is ever
downloaded (the user fetches the files from the model's page)::

    SD/vae/config.json         + diffusion_pytorch_model.safetensors (or .bin, .fp16.*, sharded)
    SD/unet/config.json        + the same
    SD/text_encoder/, SD/tokenizer/    (CLIP: busmonai.networks.text_encoders.CLIPTextEncoder)
    CN/config.json             + weights: an optional diffusers ControlNet folder (or CN/controlnet/)

Parts and their MONAI networks (plain modules under ``monai.networks`` / ``busmonai.networks``, so
:mod:`busmonai.networks.described` records their constructor arguments like any other):

- ``vae/`` -> :class:`busmonai.networks.sd_autoencoder.LDMAutoencoderKL` (MONAI's ``AutoencoderKL``
  in SD's layout: double-z encoder output, ``layers + 1`` decoder ResNets per level);
- ``unet/`` -> ``monai.networks.nets.DiffusionModelUNet``;
- a ControlNet folder -> ``monai.networks.nets.ControlNet``; without one, :func:`init_controlnet`
  copies the SD UNet's encoder into the bundle's ControlNet (Zhang & Agrawala, ICCV 2023).

**Design.** Each part's ``config.json`` is mapped to MONAI constructor arguments by
:mod:`busmonai.networks.sd_config`, after its tables of the diffusers options MONAI cannot express
(``*_FIXED``: option -> the only value accepted, and why); an option it does not know is refused
unless it is null or false. The bundle's own network (``like=``) then supplies what SD cannot
know: grey image channels, extra UNet inputs, ``use_checkpoint`` / ``use_flash_attention``; its
latent channels and text width must be SD's. The weights are renamed by the block tables of
:mod:`busmonai.networks.sd_weights` and
checked against MONAI's parameter shapes for the config's own architecture (built on the meta
device): a missing, unexpected or differently shaped tensor is an error naming the weights file.

**Refused** (:class:`~busmonai.errors.BusmonaiInputError` naming the config file and the option):
SD-XL and other added embeddings (``addition_embed_type`` "text_time", ``class_embed_type``,
``encoder_hid_dim``, ``time_cond_proj_dim``), per-level ``transformer_layers_per_block`` that differ
(MONAI has one ``transformer_num_layers``), other block types (``SimpleCrossAttn``, ``AttnDownEncoderBlock2D``...),
scale-shift time conditioning, other timestep embeddings (MONAI's is ``flip_sin_to_cos=True``,
``freq_shift=0``), other activations or kernels, a VAE without quant convs or middle attention,
a BGR ControlNet, a folder without ``<part>/config.json``. Accepted because exact: SD 2.x's
``use_linear_projection`` (a linear layer on the pixels is a 1x1 convolution), per-level head counts,
``upcast_attention`` (MONAI's own option). Not architecture and ignored: ``scaling_factor`` (the
bundles measure ``1 / std`` of their own latents), ``force_upcast``, ``sample_size``.

**Grey images (the one channel rule).** BUS images and masks have one channel, SD's VAE and
ControlNet three. The first convolution's kernel is summed over its RGB inputs, so a grey image ``x``
goes in as the RGB image ``(x, x, x)`` would; the VAE's last convolution is averaged over its RGB
outputs (kernel and bias), so the grey output is the mean of SD's R, G and B. Both are exact: the
converted grey VAE gives ``mean_c SD(x, x, x)_c`` and ``SD.encode(x, x, x)``. Intensities are not
remapped: busmonai's images lie in [0, 1], inside SD's [-1, 1], and fine-tuning adapts to them (a
``2x - 1`` folded into the first convolution would be inexact at the zero-padded border). A UNet
built with more inputs than SD's (``mask_input.json``) gets zero weights for the extra channels.

**Numerics.** Converted networks match diffusers' outputs to about 1e-5 in float32; the only known
difference is that MONAI's UNet uses the config's ``norm_eps`` (1e-5) for the GroupNorm before each
transformer too, where diffusers fixes it at 1e-6.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import ControlNet, DiffusionModelUNet
from torch import nn

from busmonai.errors import BusmonaiInputError
from busmonai.networks import described
from busmonai.networks.controlnet import init_from_unet
from busmonai.networks.sd_autoencoder import LDMAutoencoderKL
from busmonai.networks.sd_config import controlnet_kwargs, read_part, unet_kwargs, vae_kwargs
from busmonai.networks.sd_weights import (
    channel_rule,
    controlnet_blocks,
    convert,
    fit_channels,
    monai_name,
    read_weights,
    unet_blocks,
    vae_blocks,
)

__all__ = [
    "autoencoder", "autoencoder_arch", "controlnet", "controlnet_arch",
    "init_controlnet", "load_autoencoder_weights", "load_controlnet_weights", "load_unet_weights", "memory_estimate",
    "print_memory_estimate", "unet", "unet_arch",
]

_HINTS = {
    "cross_attention_dim": "use the CLIP text encoder of the same folder (text_encoder_arch = @clip_text_encoder_arch "
                           "with path = sd_path; the paper profile does so when sd_path is set)",
    "latent_channels": "set latent_channels to SD's (the paper profile's 4)",
    "out_channels": "the UNet predicts noise of the autoencoder's latent channels: use SD's VAE (4 channels)",
}
_KEPT = ("use_checkpoint", "use_flash_attention")
"""Options that change no weight: taken from the bundle's own network."""


def _with_bundle(kwargs: dict[str, Any], like: Any, file: Path, match: Sequence[str],
                 channels: Mapping[str, tuple[int, str]]) -> dict[str, Any]:
    """SD's arguments with the bundle's ``like`` (a partial or description of its own network) applied:
    ``match`` must agree, ``channels`` (option -> (dim, what)) may be adapted, :data:`_KEPT` are copied."""
    theirs = dict(like.keywords if isinstance(like, functools.partial) else like or {})
    for key in match:
        if key in theirs and theirs[key] is not None and theirs[key] != kwargs[key]:
            raise BusmonaiInputError(f"{file}: {key} is {kwargs[key]} in Stable Diffusion but {theirs[key]} in the "
                                     f"bundle's network; {_HINTS.get(key, 'use matching settings')}")
    for key, (dim, what) in channels.items():
        if key in theirs:
            channel_rule(kwargs[key], int(theirs[key]), dim, f"{file}: {key} ({what})")  # refuse now, not at load
            kwargs[key] = int(theirs[key])
    kwargs.update({key: theirs[key] for key in _KEPT if key in theirs})
    return kwargs


def autoencoder_arch(path: str | Path, like: Any = None) -> functools.partial:
    """The ``LDMAutoencoderKL`` partial of ``path/vae`` (``like``: the bundle's autoencoder, whose image
    channels (1: the grey rule) and ``use_checkpoint`` are used; its ``latent_channels`` must be SD's)."""
    config, file = read_part(path, "vae")
    kwargs = _with_bundle(vae_kwargs(config, file), like, file, ("latent_channels",),
                          {"in_channels": (1, "image channels"), "out_channels": (0, "image channels")})
    return functools.partial(LDMAutoencoderKL, **kwargs)


def unet_arch(path: str | Path, like: Any = None) -> functools.partial:
    """The ``DiffusionModelUNet`` partial of ``path/unet`` (``like``: the bundle's UNet, whose
    ``in_channels`` may add inputs and whose ``out_channels`` and ``cross_attention_dim`` must be SD's)."""
    config, file = read_part(path, "unet")
    kwargs = _with_bundle(unet_kwargs(config, file), like, file, ("out_channels", "cross_attention_dim"),
                          {"in_channels": (1, "latent and mask channels")})
    return functools.partial(DiffusionModelUNet, **kwargs)


def controlnet_arch(path: str | Path, like: Any = None) -> functools.partial:
    """The MONAI ``ControlNet`` partial of a diffusers ControlNet folder (``like``: the bundle's ControlNet;
    ``conditioning_embedding_in_channels`` 1 takes a grey mask)."""
    config, file = read_part(path, "controlnet")
    kwargs = _with_bundle(controlnet_kwargs(config, file), like, file, ("cross_attention_dim",),
                          {"in_channels": (1, "latent channels"), "conditioning_embedding_in_channels": (1, "mask channels")})
    return functools.partial(ControlNet, **kwargs)


# ------------------------------------------------------------------ weights
def _shapes(factory: Any, kwargs: Mapping[str, Any], file: Path) -> dict[str, torch.Size]:
    """MONAI's parameter shapes for ``kwargs``, from a network built on the meta device (no memory)."""
    try:
        with torch.device("meta"):
            network = factory(**kwargs)
    except (ValueError, AssertionError, TypeError) as error:
        raise BusmonaiInputError(f"{file}: MONAI's {getattr(factory, '__name__', factory)} cannot be built from it "
                                 f"({error})") from error
    return {key: value.shape for key, value in network.state_dict().items()}


def _converted(path: str | Path, part: str) -> tuple[dict[str, torch.Tensor], list[Any], Path]:
    """``(MONAI state dict for the config's own architecture, block rows, weights file)`` of one part."""
    config, file = read_part(path, part)
    if part == "vae":
        kwargs, factory = vae_kwargs(config, file), LDMAutoencoderKL
        blocks = vae_blocks(kwargs["num_res_blocks"], len(kwargs["channels"]))
    else:
        kwargs = unet_kwargs(config, file) if part == "unet" else controlnet_kwargs(config, file)
        factory = DiffusionModelUNet if part == "unet" else ControlNet
        args = (kwargs["num_res_blocks"], kwargs["attention_levels"], kwargs["transformer_num_layers"])
        blocks = unet_blocks(*args) if part == "unet" else controlnet_blocks(
            *args, len(kwargs["conditioning_embedding_num_channels"]))
    folder = file.parent
    source, weights_file = read_weights(folder)
    return convert(source, blocks, _shapes(factory, kwargs, file), weights_file, file), blocks, weights_file


def _load(network: nn.Module, state: Mapping[str, torch.Tensor], weights_file: Path, strict: bool = True) -> None:
    try:
        network.load_state_dict(state, strict=strict)
    except RuntimeError as error:
        raise BusmonaiInputError(f"{weights_file}: the converted weights do not fit the network the bundle built "
                                 f"({str(error).splitlines()[0]} ...); build it with this folder's *_arch()") from error


def _fit(state: dict[str, torch.Tensor], network: nn.Module, rules: Sequence[tuple[str, int]], what: str) -> None:
    target = network.state_dict()
    for key, dim in rules:
        if key in target:
            fit_channels(state, key, dim, target[key].shape[dim], f"{what}: {key}")


def load_autoencoder_weights(network: nn.Module, path: str | Path | None) -> nn.Module:
    """Load ``path/vae``'s weights into an :func:`autoencoder_arch` network (grey rule applied); ``path``
    None returns ``network`` as it is (the random initialisation of the paper profile)."""
    if not path:
        return network
    state, blocks, weights_file = _converted(path, "vae")
    first, last = (monai_name(key, blocks) for key in ("encoder.conv_in.weight", "decoder.conv_out.weight"))
    _fit(state, network, [(first, 1), (last, 0)], str(weights_file))
    _load(network, state, weights_file)
    return network


def load_unet_weights(model: nn.Module, path: str | Path | None) -> nn.Module:
    """Load ``path/unet``'s weights into a :func:`unet_arch` UNet, or into the ``.unet`` of a
    :class:`~busmonai.networks.latent_diffusion.LatentDiffusionModel`; ``path`` None: unchanged."""
    if not path:
        return model
    unet = getattr(model, "unet", model)
    state, _, weights_file = _converted(path, "unet")
    _fit(state, unet, [("conv_in.conv.weight", 1)], str(weights_file))
    _load(unet, state, weights_file)
    return model


def load_controlnet_weights(network: nn.Module, path: str | Path) -> nn.Module:
    """Load a diffusers ControlNet folder's weights into a :func:`controlnet_arch` ControlNet (grey mask rule)."""
    state, _, weights_file = _converted(path, "controlnet")
    _fit(state, network, [("conv_in.conv.weight", 1), ("controlnet_cond_embedding.conv_in.conv.weight", 1)],
         str(weights_file))
    _load(network, state, weights_file)
    return network


CONTROLNET_OWN = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")
"""ControlNet parameters that have no UNet counterpart (conditioning embedding, zero convolutions)."""


def init_controlnet(controlnet: nn.Module, unet: nn.Module, sd_path: str | Path | None = None,
                    controlnet_path: str | Path | None = None) -> list[str]:
    """Initialise the bundle's ControlNet; returns the keys set.

    - ``controlnet_path``: every weight from that diffusers ControlNet folder;
    - else ``sd_path``: the SD UNet's encoder (time embedding, input conv, down and middle blocks),
      as Zhang & Agrawala's ControlNet copies its base model; every such weight must fit;
    - else: :func:`busmonai.networks.controlnet.init_from_unet` from ``unet`` (the LDM it steers).

    Raises:
        BusmonaiInputError: the SD UNet or ControlNet folder does not fit the bundle's ControlNet.
    """
    if controlnet_path:
        load_controlnet_weights(controlnet, controlnet_path)
        return list(controlnet.state_dict())
    if not sd_path:
        return init_from_unet(controlnet, unet)
    state, _, weights_file = _converted(sd_path, "unet")
    _fit(state, controlnet, [("conv_in.conv.weight", 1)], str(weights_file))
    target = controlnet.state_dict()
    needed = [key for key in target if not key.startswith(CONTROLNET_OWN)]
    bad = [key for key in needed if key not in state or state[key].shape != target[key].shape]
    if bad:
        raise BusmonaiInputError(
            f"{weights_file}: the Stable Diffusion UNet does not fit the ControlNet built from the LDM checkpoint "
            f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); train the LDM with the same --sd_path"
        )
    _load(controlnet, {key: state[key] for key in needed}, weights_file, strict=False)
    return needed


# ------------------------------------------------------------------ one-call builders (scripts, tests)
def autoencoder(path: str | Path, image_channels: int = 1, **options: Any) -> LDMAutoencoderKL:
    """SD's VAE as a MONAI autoencoder for ``image_channels`` images (1: the grey rule)."""
    arch = autoencoder_arch(path, like={"in_channels": image_channels, "out_channels": image_channels, **options})
    return load_autoencoder_weights(described.build(arch), path)  # type: ignore[return-value]


def unet(path: str | Path, **like: Any) -> DiffusionModelUNet:
    """SD's UNet as MONAI's ``DiffusionModelUNet`` (``like``: see :func:`unet_arch`)."""
    return load_unet_weights(described.build(unet_arch(path, like=like)), path)  # type: ignore[return-value]


def controlnet(path: str | Path, conditioning_channels: int = 1, **like: Any) -> ControlNet:
    """A diffusers ControlNet folder as MONAI's ``ControlNet`` for ``conditioning_channels`` masks."""
    arch = controlnet_arch(path, like={"conditioning_embedding_in_channels": conditioning_channels, **like})
    return load_controlnet_weights(described.build(arch), path)  # type: ignore[return-value]


# ------------------------------------------------------------------ memory before training
def memory_estimate(trainable: nn.Module, frozen: Sequence[nn.Module | None] = (), optimizer_moments: int = 2,
                    ema: bool = True) -> dict[str, float]:
    """GiB held before the first activation: weights (all modules), gradients and optimizer moments
    (float32, of ``trainable``'s parameters that require gradients) and an EMA copy of ``trainable``."""
    gib = 1024.0 ** 3
    learned = [p for p in trainable.parameters() if p.requires_grad]
    tensors = {id(t): t for m in (trainable, *frozen) if m is not None for t in (*m.parameters(), *m.buffers())}
    weights = sum(t.numel() * t.element_size() for t in tensors.values())  # shared modules counted once
    grads = sum(p.numel() * p.element_size() for p in learned)
    moments = optimizer_moments * sum(p.numel() * 4 for p in learned)
    copy = sum(t.numel() * t.element_size() for t in (*trainable.parameters(), *trainable.buffers())) if ema else 0
    parts = {"weights": weights / gib, "gradients": grads / gib, "optimizer": moments / gib, "ema": copy / gib}
    return {**parts, "total": sum(parts.values()), "trainable_parameters": float(sum(p.numel() for p in learned))}


def print_memory_estimate(trainable: nn.Module, frozen: Sequence[nn.Module | None] = (), label: str = "training",
                          optimizer_moments: int = 2, ema: bool = True) -> nn.Module:
    """Print :func:`memory_estimate` (before training, from the paper profiles) and return ``trainable``."""
    est = memory_estimate(trainable, frozen, optimizer_moments, ema)
    print(f"[busmonai] {label} memory estimate before activations: {est['total']:.2f} GiB = weights "
          f"{est['weights']:.2f} + gradients {est['gradients']:.2f} + optimizer {est['optimizer']:.2f} + EMA "
          f"{est['ema']:.2f} ({est['trainable_parameters'] / 1e6:.1f} M trainable parameters); activations grow "
          "with batch_size and image_size (measured: scripts/gpu_paper_profile.py)", flush=True)
    return trainable
