"""Stable Diffusion weights in diffusers' layout -> MONAI parameter names: the tables and the copy.

Used by :mod:`busmonai.networks.stable_diffusion` (read that module's docstring first). A network is
described here as a list of :data:`Block` rows ``(diffusers prefix, MONAI prefix, leaf table)``
generated from the part's ``config.json``; a leaf table maps the sub-module paths inside one block
(``conv1``, ``transformer_blocks.0.attn1.to_out.0``) to MONAI's, and the parameter name
(``weight``, ``bias``) is kept. A diffusers key that no row maps is *unexpected*, a MONAI key that
no diffusers key reaches is *missing*; both, and any shape that differs, are errors naming the
weights file.

Only two shape rules apply while copying, both exact: a linear weight ``(out, in)`` and a 1x1
convolution kernel ``(out, in, 1, 1)`` are the same map on a feature map, so either fills the other
(diffusers' ``use_linear_projection``, old VAE attention checkpoints); a leaf whose table entry is
a tuple (the VAE's ``quant_conv``) is split along its output channels into those MONAI modules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from busmonai.errors import BusmonaiInputError

__all__ = [
    "WEIGHT_FILES", "Block", "channel_rule", "controlnet_blocks", "convert", "fit_channels", "monai_name",
    "read_weights", "transformer_leaves", "unet_blocks", "vae_blocks",
]

WEIGHT_FILES: tuple[str, ...] = (
    "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin",
)
"""The weight files of one part, in order of preference (the fp16 variants are read as float32)."""
INDEX_FILES: tuple[str, ...] = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")
"""Sharded weights: an index whose ``weight_map`` names each tensor's shard."""

Leaf = str | tuple[str, ...]
Block = tuple[str, str, Mapping[str, Leaf]]
"""``(diffusers prefix, MONAI prefix, {diffusers sub-module: MONAI sub-module})``; ``""`` is the block itself."""

# ------------------------------------------------------------------ leaf tables
CONV: Mapping[str, Leaf] = {"": "conv"}
"""A diffusers ``nn.Conv2d`` is the ``.conv`` of MONAI's ``Convolution(conv_only=True)``."""
SAME: Mapping[str, Leaf] = {"": ""}
"""The same torch module on both sides (``GroupNorm``, ``Linear``, a bare ``Conv2d`` in MONAI)."""
TIME_EMBEDDING: Mapping[str, Leaf] = {"linear_1": "0", "linear_2": "2"}
UNET_RESNET: Mapping[str, Leaf] = {
    "norm1": "norm1", "conv1": "conv1.conv", "time_emb_proj": "time_emb_proj", "norm2": "norm2",
    "conv2": "conv2.conv", "conv_shortcut": "skip_connection.conv",
}
UNET_DOWNSAMPLE: Mapping[str, Leaf] = {"conv": "op.conv"}
UNET_UPSAMPLE: Mapping[str, Leaf] = {"conv": "postconv.conv"}
VAE_RESNET: Mapping[str, Leaf] = {
    "norm1": "norm1", "conv1": "conv1.conv", "norm2": "norm2", "conv2": "conv2.conv",
    "conv_shortcut": "nin_shortcut.conv",
}
VAE_ATTENTION: Mapping[str, Leaf] = {
    "group_norm": "norm", "to_q": "attn.to_q", "to_k": "attn.to_k", "to_v": "attn.to_v", "to_out.0": "attn.out_proj",
    # the names in VAE folders saved by diffusers before 0.14 (diffusers still reads them)
    "query": "attn.to_q", "key": "attn.to_k", "value": "attn.to_v", "proj_attn": "attn.out_proj",
}
VAE_DOWNSAMPLE: Mapping[str, Leaf] = {"conv": "conv.conv"}
VAE_UPSAMPLE: Mapping[str, Leaf] = {"conv": "postconv.conv"}
QUANT_CONV: Mapping[str, Leaf] = {"": ("quant_conv_mu.conv", "quant_conv_log_sigma.conv")}
"""SD's one 1x1 conv over (mean, log-variance) becomes MONAI's two: its first and second halves."""


def transformer_leaves(num_layers: int) -> dict[str, Leaf]:
    """Diffusers' ``Transformer2DModel`` -> MONAI's ``SpatialTransformer`` with ``num_layers`` blocks."""
    table: dict[str, Leaf] = {"norm": "norm", "proj_in": "proj_in.conv", "proj_out": "proj_out.conv"}
    for layer in range(num_layers):
        block = f"transformer_blocks.{layer}."
        for name in ("norm1", "norm2", "norm3", *(f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v"))):
            table[block + name] = block + name
        table[block + "attn1.to_out.0"] = block + "attn1.out_proj"
        table[block + "attn2.to_out.0"] = block + "attn2.out_proj"
        table[block + "ff.net.0.proj"] = block + "ff.linear1"  # GEGLU: value and gate in one linear
        table[block + "ff.net.2"] = block + "ff.linear2"
    return table


# ------------------------------------------------------------------ block lists from a config
def _encoder_blocks(layers: Sequence[int], attention: Sequence[bool], num_layers: int) -> list[Block]:
    """Input conv, time embedding, down blocks and middle block: shared by the UNet and the ControlNet."""
    transformer = transformer_leaves(num_layers)
    rows: list[Block] = [("conv_in.", "conv_in.", CONV), ("time_embedding.", "time_embed.", TIME_EMBEDDING)]
    for level, count in enumerate(layers):
        for j in range(count):
            rows.append((f"down_blocks.{level}.resnets.{j}.", f"down_blocks.{level}.resnets.{j}.", UNET_RESNET))
            if attention[level]:
                rows.append((f"down_blocks.{level}.attentions.{j}.", f"down_blocks.{level}.attentions.{j}.", transformer))
        if level < len(layers) - 1:
            rows.append((f"down_blocks.{level}.downsamplers.0.", f"down_blocks.{level}.downsampler.", UNET_DOWNSAMPLE))
    rows += [
        ("mid_block.resnets.0.", "middle_block.resnet_1.", UNET_RESNET),
        ("mid_block.attentions.0.", "middle_block.attention.", transformer),
        ("mid_block.resnets.1.", "middle_block.resnet_2.", UNET_RESNET),
    ]
    return rows


def unet_blocks(layers: Sequence[int], attention: Sequence[bool], num_layers: int) -> list[Block]:
    """``UNet2DConditionModel`` -> ``DiffusionModelUNet``: per level ``layers[i]`` ResNets down and
    ``layers[i] + 1`` up (both libraries), ``attention[i]`` a transformer after each."""
    rows = _encoder_blocks(layers, attention, num_layers)
    transformer = transformer_leaves(num_layers)
    levels = len(layers)
    for up, level in enumerate(reversed(range(levels))):
        for j in range(layers[level] + 1):
            rows.append((f"up_blocks.{up}.resnets.{j}.", f"up_blocks.{up}.resnets.{j}.", UNET_RESNET))
            if attention[level]:
                rows.append((f"up_blocks.{up}.attentions.{j}.", f"up_blocks.{up}.attentions.{j}.", transformer))
        if up < levels - 1:
            rows.append((f"up_blocks.{up}.upsamplers.0.", f"up_blocks.{up}.upsampler.", UNET_UPSAMPLE))
    rows += [("conv_norm_out.", "out.0.", SAME), ("conv_out.", "out.2.", CONV)]
    return rows


def controlnet_blocks(layers: Sequence[int], attention: Sequence[bool], num_layers: int,
                      embedding_levels: int) -> list[Block]:
    """``ControlNetModel`` -> MONAI ``ControlNet``: the UNet's encoder, the conditioning embedding
    (``2 * (embedding_levels - 1)`` inner convs) and the zero convolutions, one per skip connection."""
    rows = _encoder_blocks(layers, attention, num_layers)
    rows.append(("controlnet_cond_embedding.conv_in.", "controlnet_cond_embedding.conv_in.", CONV))
    for k in range(2 * (embedding_levels - 1)):
        rows.append((f"controlnet_cond_embedding.blocks.{k}.", f"controlnet_cond_embedding.blocks.{k}.", CONV))
    rows.append(("controlnet_cond_embedding.conv_out.", "controlnet_cond_embedding.conv_out.", CONV))
    skips = 1 + sum(layers) + len(layers) - 1  # conv_in, every ResNet, every downsampler
    # MONAI keeps its first zero convolution as a bare Conv2d and the others as Convolution blocks
    rows += [(f"controlnet_down_blocks.{k}.", f"controlnet_down_blocks.{k}.", SAME if k == 0 else CONV)
             for k in range(skips)]
    rows.append(("controlnet_mid_block.", "controlnet_mid_block.", CONV))
    return rows


def vae_blocks(layers: int, levels: int) -> list[Block]:
    """Diffusers' ``AutoencoderKL`` -> :class:`busmonai.networks.sd_autoencoder.LDMAutoencoderKL`.

    MONAI's encoder and decoder are flat ``blocks`` lists, counted here in their order: encoder
    ``conv_in, (ResNet x layers, downsample)`` per level, middle ``ResNet, attention, ResNet``,
    ``GroupNorm, SiLU, conv_out``; decoder ``conv_in``, middle, ``(ResNet x (layers + 1), upsample)``
    per level, ``GroupNorm, SiLU, conv_out``.
    """
    rows: list[Block] = []

    def middle(side: str, first: int) -> None:
        rows.extend([
            (f"{side}.mid_block.resnets.0.", f"{side}.blocks.{first}.", VAE_RESNET),
            (f"{side}.mid_block.attentions.0.", f"{side}.blocks.{first + 1}.", VAE_ATTENTION),
            (f"{side}.mid_block.resnets.1.", f"{side}.blocks.{first + 2}.", VAE_RESNET),
        ])

    rows.append(("encoder.conv_in.", "encoder.blocks.0.", CONV))
    index = 1
    for level in range(levels):
        for j in range(layers):
            rows.append((f"encoder.down_blocks.{level}.resnets.{j}.", f"encoder.blocks.{index}.", VAE_RESNET))
            index += 1
        if level < levels - 1:
            rows.append((f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.blocks.{index}.", VAE_DOWNSAMPLE))
            index += 1
    middle("encoder", index)
    rows += [("encoder.conv_norm_out.", f"encoder.blocks.{index + 3}.", SAME),  # then SiLU (no weights)
             ("encoder.conv_out.", f"encoder.blocks.{index + 5}.", CONV)]

    rows.append(("decoder.conv_in.", "decoder.blocks.0.", CONV))
    middle("decoder", 1)
    index = 4
    for level in range(levels):
        for j in range(layers + 1):
            rows.append((f"decoder.up_blocks.{level}.resnets.{j}.", f"decoder.blocks.{index}.", VAE_RESNET))
            index += 1
        if level < levels - 1:
            rows.append((f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.blocks.{index}.", VAE_UPSAMPLE))
            index += 1
    rows += [("decoder.conv_norm_out.", f"decoder.blocks.{index}.", SAME),
             ("decoder.conv_out.", f"decoder.blocks.{index + 2}.", CONV),
             ("quant_conv.", "", QUANT_CONV), ("post_quant_conv.", "post_quant_conv.", CONV)]
    return rows


# ------------------------------------------------------------------ renaming and copying
def _join(*parts: str) -> str:
    return ".".join(part.strip(".") for part in parts if part.strip("."))


def _targets(key: str, blocks: Sequence[Block]) -> tuple[str, ...] | None:
    """The MONAI key(s) of a diffusers key, or None when no block row maps it."""
    module, _, parameter = key.rpartition(".")
    for prefix, monai_prefix, leaves in blocks:
        if (module + ".").startswith(prefix):
            leaf = leaves.get(module[len(prefix):])
            if leaf is None:
                return None
            return tuple(_join(monai_prefix, name, parameter) for name in ((leaf,) if isinstance(leaf, str) else leaf))
    return None


def monai_name(key: str, blocks: Sequence[Block]) -> str:
    """The (first) MONAI key of the diffusers key ``key``.

    Raises:
        KeyError: no block row maps ``key``.
    """
    targets = _targets(key, blocks)
    if not targets:
        raise KeyError(key)
    return targets[0]


def _source_name(monai_key: str, blocks: Sequence[Block]) -> str:
    """The diffusers key that would fill ``monai_key`` (for messages about missing tensors)."""
    for prefix, monai_prefix, leaves in blocks:
        for leaf, target in leaves.items():
            for name in (target,) if isinstance(target, str) else target:
                module = _join(monai_prefix, name)
                if monai_key.rpartition(".")[0] == module:
                    return _join(prefix, leaf, monai_key.rpartition(".")[2])
    return monai_key


def _examples(keys: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def convert(source: Mapping[str, torch.Tensor], blocks: Sequence[Block], expected: Mapping[str, torch.Size],
            weights_file: Path, config_file: Path) -> dict[str, torch.Tensor]:
    """Rename diffusers tensors to MONAI's and check them against the network ``config_file`` describes.

    Args:
        source: the tensors of ``weights_file``.
        blocks: the part's block rows (from its config).
        expected: MONAI's parameter shapes for the config's own architecture.
        weights_file, config_file: named in errors.

    Returns:
        MONAI's state dict (float32).

    Raises:
        BusmonaiInputError: unexpected or missing tensors, or shapes that differ from the config's.
    """
    state: dict[str, torch.Tensor] = {}
    reached: set[str] = set()
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, tensor in source.items():
        targets = _targets(key, blocks)
        if targets is None or any(target not in expected for target in targets):
            unexpected.append(key)
            continue
        reached.update(targets)
        for target, piece in zip(targets, tensor.chunk(len(targets), dim=0) if len(targets) > 1 else (tensor,)):
            want = tuple(expected[target])
            if tuple(piece.shape) != want and piece.numel() == torch.Size(want).numel() and \
                    {piece.dim(), len(want)} == {2, 4} and piece.shape[:2] == torch.Size(want[:2]):
                piece = piece.reshape(want)  # linear (out, in) <-> 1x1 conv (out, in, 1, 1)
            if tuple(piece.shape) != want:
                mismatched.append(f"{key} {tuple(piece.shape)} (config: {want})")
                continue
            if target in state:
                raise BusmonaiInputError(f"{weights_file}: two tensors fill {target} (the second is {key}): "
                                         "the file mixes old and new diffusers names; re-save it with diffusers")
            state[target] = piece.detach().to(torch.float32)
    missing = [_source_name(key, blocks) for key in expected if key not in reached]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing ({_examples(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) ({_examples(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} of another shape ({_examples(mismatched)})")
    if problems:
        raise BusmonaiInputError(
            f"{weights_file}: the weights do not match {config_file}: {'; '.join(problems)}. Use the weights "
            "saved with that config.json (a complete diffusers folder, not a merged or pruned file)"
        )
    return state


def channel_rule(have: int, size: int, dim: int, what: str) -> str:
    """How a kernel's input (``dim`` 1) or output (``dim`` 0) channels go from ``have`` to ``size``.

    The rule of :mod:`busmonai.networks.stable_diffusion`: ``"sum"`` inputs narrowed to 1 (a grey
    image fed as R = G = B), ``"pad"`` inputs widened (the extra inputs get zero weights),
    ``"mean"`` outputs narrowed to 1 (kernel and bias: the grey value of the RGB output), ``"same"``.

    Raises:
        BusmonaiInputError: any other change of channels (``what`` names the option).
    """
    if have == size:
        return "same"
    if dim == 1 and size == 1:
        return "sum"
    if dim == 1 and size > have:
        return "pad"
    if dim == 0 and size == 1:
        return "mean"
    raise BusmonaiInputError(
        f"{what}: Stable Diffusion's {have} channels cannot become {size}; only a grey (1-channel) image or mask "
        "instead of RGB, and extra input channels of the UNet (zero weights), are supported"
    )


def fit_channels(state: dict[str, torch.Tensor], key: str, dim: int, size: int, what: str) -> None:
    """Apply :func:`channel_rule` to ``state[key]`` (and, for outputs, its bias), in place."""
    weight = state[key]
    rule = channel_rule(weight.shape[dim], size, dim, what)
    bias_key = key[: -len("weight")] + "bias"
    if rule == "sum":
        state[key] = weight.sum(dim=1, keepdim=True)
    elif rule == "pad":
        pad = torch.zeros(weight.shape[0], size - weight.shape[1], *weight.shape[2:], dtype=weight.dtype)
        state[key] = torch.cat([weight, pad], dim=1)
    elif rule == "mean":
        state[key] = weight.mean(dim=0, keepdim=True)
        if bias_key in state:
            state[bias_key] = state[bias_key].mean(dim=0, keepdim=True)


# ------------------------------------------------------------------ reading the files
def _read_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BusmonaiInputError(f"{path}: not a readable weights file ({error})") from error
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise BusmonaiInputError(f"{path}: expected a state dict of tensors, found {type(data).__name__}")
    return dict(data)


def read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of one diffusers part folder and the file they came from (first of :data:`WEIGHT_FILES`,
    or a sharded index).

    Raises:
        BusmonaiInputError: no weights file, or an unreadable one.
    """
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return _read_file(folder / name), folder / name
    for name in INDEX_FILES:
        index = folder / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as error:
                raise BusmonaiInputError(f"{index}: not a diffusers weight index ({error})") from error
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                tensors.update(_read_file(folder / shard))
            return tensors, index
    raise BusmonaiInputError(
        f"{folder} has no weights: expected one of {', '.join(WEIGHT_FILES)} beside its config.json"
    )
