"""Low-rank adapters (LoRA) on the latent diffusion UNet's attention projections, with PEFT.

Cross-domain adaptation (docs/method.md section 5): a generator trained on one hospital's images (BUSI)
is adapted to another scanner (UDIAT, BUS-UCLM, ...) by training only low-rank updates
``W' = W + (alpha / r) B A`` of the attention projections (Hu et al. 2021, "LoRA: Low-Rank
Adaptation of Large Language Models", ICLR 2022). CP (MICCAI 2025) adapts q, k, v and out of the
self- and cross-attention layers (its parameter counts, 0.40M / 0.80M / 1.59M at r = 2 / 4 / 8 on
the SD v1.5 UNet, imply all four projections of both); MEDDAP adapts the cross-attention only.

The layers are PEFT's (``peft.inject_adapter_in_model`` on MONAI's ``DiffusionModelUNet``, whose
``SABlock`` / ``CrossAttentionBlock`` hold ``to_q``, ``to_k``, ``to_v`` and ``out_proj``
``nn.Linear`` layers). This module adds what the bundles need around them: target selection by
name (presets, module paths, leaf names or regular expressions) with errors that list the valid
names; freezing of every base weight; a fingerprint of the base UNet; merge and unmerge; and the
parameter count ``r (d_in + d_out)`` per targeted layer. The adapter file is
:mod:`busmonai.networks.lora_file`; saving it during training, :class:`busmonai.engines.handlers.AdapterSaver`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from busmonai.errors import BusmonaiInputError

ADAPTER_NAME = "default"
"""PEFT's adapter name inside the modules (one adapter per UNet)."""
FORMAT_VERSION = 1
PROJECTIONS: tuple[str, ...] = ("to_q", "to_k", "to_v", "qkv", "out_proj")
"""Linear projections of MONAI's attention blocks (``qkv`` when a block fuses q, k and v)."""
PRESETS: dict[str, str] = {
    "attention": "q, k, v and out of every self- and cross-attention block (CP)",
    "cross_attention": "q, k, v and out of the cross-attention blocks only (MEDDAP)",
    "self_attention": "q, k, v and out of the self-attention blocks only",
}

Targets = str | Sequence[str]


# ----------------------------------------------------------------------------------------------
# finding the layers


def unet_of(model: nn.Module) -> nn.Module:
    """The diffusion UNet inside ``model``: unwraps DistributedDataParallel / ``AveragedModel``
    (``.module``) and :class:`~busmonai.networks.latent_diffusion.LatentDiffusionModel` (``.unet``)."""
    model = getattr(model, "module", model)
    return getattr(model, "unet", model)


def _attention_kinds() -> dict[type, str]:
    from monai.networks.blocks.crossattention import CrossAttentionBlock
    from monai.networks.blocks.selfattention import SABlock

    return {CrossAttentionBlock: "cross_attention", SABlock: "self_attention"}


def _base_linear(module: nn.Module) -> nn.Linear | None:
    """The ``nn.Linear`` of a plain or LoRA-wrapped layer, else None."""
    base = getattr(module, "base_layer", module)
    return base if isinstance(base, nn.Linear) else None


def linear_layers(unet: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of ``unet`` by module path (a LoRA-wrapped layer under its own path)."""
    found: dict[str, nn.Linear] = {}
    for name, module in unet.named_modules():
        if name.endswith(".base_layer") or ".lora_" in name or name.startswith("lora_"):
            continue
        linear = _base_linear(module)
        if linear is not None and name:
            found[name] = linear
    return found


def attention_layers(unet: nn.Module) -> dict[str, str]:
    """Attention projections of ``unet``: module path -> ``"self_attention"`` or ``"cross_attention"``."""
    kinds = _attention_kinds()
    modules = dict(unet.named_modules())
    found: dict[str, str] = {}
    for name in linear_layers(unet):
        parent, _, leaf = name.rpartition(".")
        if leaf not in PROJECTIONS or parent not in modules:
            continue
        for cls, kind in kinds.items():
            if isinstance(modules[parent], cls):
                found[name] = kind
    return found


def valid_names(unet: nn.Module) -> str:
    leaves = sorted({leaf for name in linear_layers(unet) if not (leaf := name.rpartition(".")[2]).isdigit()})
    example = next(iter(attention_layers(unet)), next(iter(linear_layers(unet)), "..."))
    return (f"presets {', '.join(PRESETS)}; Linear layer names {', '.join(leaves)}; "
            f"or a full module path (e.g. {example}) or a regular expression over module paths")


def resolve_targets(unet: nn.Module, targets: Targets) -> list[str]:
    """Module paths of the ``nn.Linear`` layers selected by ``targets``.

    Args:
        unet: the diffusion UNet (or a model holding one, see :func:`unet_of`).
        targets: a preset (``"attention"``, ``"cross_attention"``, ``"self_attention"``) or a
            list whose entries are presets, full module paths, leaf names (``"to_q"`` selects
            every ``*.to_q``) or regular expressions matched in full against module paths.

    Raises:
        BusmonaiInputError: an entry that selects no Linear layer, or no layer at all; the
            message lists the valid names.
    """
    unet = unet_of(unet)
    entries = [targets] if isinstance(targets, str) else list(targets)
    linears = linear_layers(unet)
    attention = attention_layers(unet)
    if not entries:
        raise BusmonaiInputError(f"LoRA 'lora_targets' is empty; valid: {valid_names(unet)}")
    chosen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            raise BusmonaiInputError(f"LoRA target {entry!r} is not a name; valid: {valid_names(unet)}")
        if entry in PRESETS:
            kinds = ("self_attention", "cross_attention") if entry == "attention" else (entry,)
            matched = {name for name, kind in attention.items() if kind in kinds}
            if not matched:
                raise BusmonaiInputError(
                    f"LoRA target preset {entry!r} selects no layer: the UNet has no such attention block "
                    "(attention_levels all false, or with_conditioning off for cross-attention)"
                )
        else:
            try:
                pattern = re.compile(entry)
            except re.error:
                pattern = None
            matched = {name for name in linears
                       if name == entry or name.endswith("." + entry)
                       or (pattern is not None and pattern.fullmatch(name))}
            if not matched:
                raise BusmonaiInputError(f"unknown LoRA target module {entry!r}; valid: {valid_names(unet)}")
        chosen |= matched
    return [name for name in linears if name in chosen]  # in module order


def lora_parameter_count(unet: nn.Module, targets: Targets, rank: int) -> int:
    """Adapter parameters of rank ``rank`` on ``targets``: ``sum r (d_in + d_out)`` over the
    targeted Linear layers (A is r x d_in, B is d_out x r; Hu et al. 2021). Works on a UNet built
    on the ``meta`` device, so the paper-size UNet can be counted without allocating it."""
    layers = linear_layers(unet_of(unet))
    return sum(rank * (layers[name].in_features + layers[name].out_features)
               for name in resolve_targets(unet, targets))


def count_trainable(model: nn.Module) -> int:
    """Parameters of ``model`` that require gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_parameters(model: nn.Module) -> int:
    """All parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_base_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` without its adapters (what full fine-tuning would train)."""
    return sum(p.numel() for k, p in model.named_parameters() if not is_lora_key(k))


# ----------------------------------------------------------------------------------------------
# applying, reading and writing adapters


def is_lora_key(key: str) -> bool:
    return ".lora_" in key or key.startswith("lora_")


def _canonical(key: str) -> str:
    return key.replace(".base_layer.", ".")


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base (non-adapter) weights of ``model`` under their original names (``.base_layer``
    removed), e.g. to verify that adapter training left them unchanged."""
    return {_canonical(k): v for k, v in model.state_dict().items() if not is_lora_key(k)}


def unet_signature(unet: nn.Module) -> str:
    """Digest of the base UNet's architecture: every parameter's name and shape (adapters excluded)."""
    shapes = sorted((_canonical(k), list(p.shape)) for k, p in unet_of(unet).named_parameters() if not is_lora_key(k))
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def has_adapter(model: nn.Module) -> bool:
    """True if PEFT LoRA layers are injected in ``model``."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def apply_lora(model: nn.Module, targets: Targets = "attention", rank: int = 4, alpha: float | None = None,
               dropout: float = 0.0, base_digest: str | None = None) -> nn.Module:
    """Inject LoRA layers into the UNet of ``model`` and freeze every base weight.

    Args:
        model: a ``LatentDiffusionModel`` or a bare diffusion UNet (modified in place).
        targets: see :func:`resolve_targets` (``"attention"``: CP; ``"cross_attention"``: MEDDAP).
        rank: r, the rank of ``B A``.
        alpha: LoRA alpha; the update is scaled by ``alpha / r`` (default ``alpha = r``: scale 1).
        dropout: dropout on the adapter's input (training only).
        base_digest: digest of the base LDM checkpoint (recorded in the adapter's fingerprint).

    Returns:
        ``model``, with only the adapter weights requiring gradients (B starts at zero, so the
        output is unchanged until it trains).

    Raises:
        BusmonaiInputError: bad rank, alpha or dropout, unknown targets, or a UNet that already
            carries an adapter.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if int(rank) != rank or rank < 1:
        raise BusmonaiInputError(f"LoRA 'lora_rank' is {rank}; use a positive integer such as 2, 4 or 8")
    alpha = float(rank if alpha is None else alpha)
    if alpha <= 0:
        raise BusmonaiInputError(f"LoRA 'lora_alpha' is {alpha}; use a positive number (e.g. the rank)")
    if not 0.0 <= dropout < 1.0:
        raise BusmonaiInputError(f"LoRA 'lora_dropout' is {dropout}; use a probability in [0, 1)")
    unet = unet_of(model)
    if has_adapter(unet):
        raise BusmonaiInputError("the UNet already carries a LoRA adapter; load the base LDM checkpoint again")
    names = resolve_targets(unet, targets)
    layers = linear_layers(unet)
    info = {
        "format": FORMAT_VERSION,
        "targets": targets if isinstance(targets, str) else list(targets),
        "target_modules": names,
        "rank": int(rank),
        "alpha": alpha,
        "dropout": float(dropout),
        "layers": {name: [layers[name].in_features, layers[name].out_features] for name in names},
        "unet_signature": unet_signature(unet),
        "base_ldm_digest": base_digest,
    }
    config = LoraConfig(r=int(rank), lora_alpha=alpha, lora_dropout=float(dropout), target_modules=names,
                        bias="none", init_lora_weights=True)
    inject_adapter_in_model(config, unet, adapter_name=ADAPTER_NAME)
    model.requires_grad_(False)
    for key, param in unet.named_parameters():
        param.requires_grad_(is_lora_key(key))
    unet.busmonai_lora = info  # plain attribute: survives deepcopy (EMA), not in the state dict
    return model


def adapter_info(model: nn.Module) -> dict[str, Any]:
    """The adapter settings and fingerprint recorded by :func:`apply_lora`.

    Raises:
        BusmonaiInputError: ``model`` has no adapter.
    """
    info = getattr(unet_of(model), "busmonai_lora", None)
    if info is None:
        raise BusmonaiInputError("the network has no LoRA adapter; apply one with busmonai.networks.lora.apply_lora")
    return dict(info)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of ``model``'s UNet only, keys relative to the UNet without PEFT's
    adapter name (``...attn2.to_k.lora_A.weight``), as ``peft.get_peft_model_state_dict``."""
    from peft import get_peft_model_state_dict

    adapter_info(model)
    return dict(get_peft_model_state_dict(unet_of(model), adapter_name=ADAPTER_NAME))


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise BusmonaiInputError("the network has no LoRA adapter to merge or unmerge")
    return layers


def merge(model: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights (``W <- W + (alpha/r) B A``), as PEFT's
    ``merge_adapter``; sampling then costs what the base UNet costs. Reversible with :func:`unmerge`."""
    for layer in _tuner_layers(model):
        if not layer.merged:
            layer.merge(safe_merge=True)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`merge` (PEFT's ``unmerge_adapter``): the base weights come back up to rounding."""
    for layer in _tuner_layers(model):
        layer.unmerge()
    return model


def is_merged(model: nn.Module) -> bool:
    """True if the adapter is folded into the base weights."""
    return all(layer.merged for layer in _tuner_layers(model))


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that train (the adapter's), for the optimizer."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise BusmonaiInputError("no trainable parameter: apply a LoRA adapter first")
    return params
