"""Trainable parameters of LoRA (r = 2, 4, 8) next to full fine-tuning of the LDM UNet (issue 8).

Prints the table in the shape of CP (MICCAI 2025) Table "cross-domain adaptation" / MEDDAP's rank
study (docs/method.md section 5): for each UNet, full fine-tuning, then LoRA on all attention
projections (q, k, v, out of self- and cross-attention, CP) and on cross-attention only (MEDDAP)
at ranks 2, 4 and 8. Counts are ``sum r (d_in + d_out)`` over the targeted Linear layers
(Hu et al. 2021, :func:`busmonai.networks.lora.lora_parameter_count`); the UNets are built on the
``meta`` device, so the paper-size UNet costs no memory.

UNets: the ``cpu`` and ``paper`` profiles of ``bundles/ldm`` (with the MiniLM text encoder's
384-d context), and the SD v1.5 geometry (768-d CLIP context) that CP adapts, which reproduces
its published counts (859.52M full; 0.40M / 0.80M / 1.59M LoRA).

Usage::

    python scripts/lora_parameters.py [--ranks 2 4 8] [--context-dim 384] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from busmonai.bundles import REPO_ROOT as REPO
LDM = REPO / "bundles" / "ldm" / "configs"
SD15 = {"spatial_dims": 2, "in_channels": 4, "out_channels": 4, "channels": [320, 640, 1280, 1280],
        "attention_levels": [True, True, True, False], "num_res_blocks": 2, "num_head_channels": [64] * 4,
        "norm_num_groups": 32, "with_conditioning": True, "transformer_num_layers": 1, "cross_attention_dim": 768}
"""Stable Diffusion v1.5's UNet in MONAI's ``DiffusionModelUNet`` terms (CP's base model)."""
TARGETS = ("attention", "cross_attention")


def profile_unet(profile: str, context_dim: int) -> torch.nn.Module:
    """The LDM bundle's UNet of ``profile`` (``cpu``: train.json, ``paper``: + paper.json) on ``meta``."""
    from monai.bundle import ConfigParser

    files = [LDM / "train.json"] + ([LDM / "paper.json"] if profile == "paper" else [])
    cwd = os.getcwd()
    os.chdir(REPO)  # '%bundles/...' macros resolve from the repository root
    try:
        parser = ConfigParser(ConfigParser.load_config_files(files))
        parser["unet_def"]["cross_attention_dim"] = context_dim  # the text encoder is not needed to count
        with torch.device("meta"):
            return parser.get_parsed_content("unet_def")
    finally:
        os.chdir(cwd)


def sd15_unet() -> torch.nn.Module:
    """SD v1.5's UNet geometry on ``meta``."""
    from monai.networks.nets import DiffusionModelUNet

    with torch.device("meta"):
        return DiffusionModelUNet(**SD15)


def parameter_rows(unet: torch.nn.Module, ranks: tuple[int, ...]) -> list[dict[str, Any]]:
    """Rows ``{"method", "targets", "rank", "layers", "parameters"}``: full fine-tuning, then LoRA
    per target set and rank."""
    from busmonai.networks.lora import count_parameters, lora_parameter_count, resolve_targets

    rows: list[dict[str, Any]] = [{"method": "full fine-tune", "targets": "all", "rank": None,
                                   "layers": None, "parameters": count_parameters(unet)}]
    for targets in TARGETS:
        layers = len(resolve_targets(unet, targets))
        rows += [{"method": f"LoRA r={r}", "targets": targets, "rank": r, "layers": layers,
                  "parameters": lora_parameter_count(unet, targets, r)} for r in ranks]
    return rows


def millions(n: int) -> str:
    """``859.52M`` / ``0.40M`` / ``15.9K`` as the papers print them."""
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}K"


def format_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """One block per UNet: method, targets, layers, trainable parameters, share of the full UNet."""
    lines = []
    for name, rows in results.items():
        full = rows[0]["parameters"]
        lines.append(f"{name}")
        lines.append(f"  {'Method':<16}{'Targets':<17}{'Layers':>7}{'Trainable':>12}{'% of UNet':>11}")
        for row in rows:
            layers = "" if row["layers"] is None else str(row["layers"])
            lines.append(f"  {row['method']:<16}{row['targets']:<17}{layers:>7}{millions(row['parameters']):>12}"
                         f"{100 * row['parameters'] / full:>10.3f}%")
        lines.append("")
    lines.append("CP (MICCAI 2025), SD v1.5 on UDIAT: full 859.52M; LoRA r=2 0.40M, r=4 0.80M, r=8 1.59M")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table; optionally write it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--context-dim", type=int, default=384,
                        help="text embedding width of the bundle profiles (MiniLM 384; CLIP 768)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    ranks = tuple(args.ranks)
    results = {
        f"cpu profile UNet (bundles/ldm train.json, context {args.context_dim})":
            parameter_rows(profile_unet("cpu", args.context_dim), ranks),
        f"paper profile UNet (bundles/ldm paper.json, context {args.context_dim})":
            parameter_rows(profile_unet("paper", args.context_dim), ranks),
        "SD v1.5 UNet (CP's base, context 768)": parameter_rows(sd15_unet(), ranks),
    }
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0
