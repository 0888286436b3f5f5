"""Speed and memory of every stage on this machine, cpu profile at 64 px (issue 7).

For each stage it builds the networks exactly as the bundle's ``train.json`` does (random weights:
speed does not depend on them) and measures, in a child process of its own so that peak memory is
per stage:

- training samples/s: forward + backward + optimizer step at the configured batch size;
- peak resident memory (RSS) of that process;
- for the LDM: sampling images/s with classifier-free guidance at 50 DDIM steps (or ``--steps``)
  for several batch sizes and thread / memory-format settings, and the achieved FLOP rate of the
  UNet forward pass (FLOPs from ``torch.utils.flop_counter``) as a fraction of this machine's dense
  matrix-multiply rate measured in the same process.

Targets: sampling >= 5 images/s with guidance, UNet forward >= 50 % of the GEMM rate, peak RSS
<= 4 GB in every stage. Writes JSON and a markdown table.

Usage::

    python scripts/benchmark.py --json runs/benchmark.json --markdown runs/benchmark.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

STAGES = ("autoencoder", "ldm", "ldm_mask_input", "controlnet", "scmg", "classification", "segmentation")
"""``ldm_mask_input`` is the cpu chain's LDM: ``mask_input.json`` (the mask as an extra input channel)."""


def demo_overrides(stage: str) -> dict[str, Any]:
    """The overrides ``busmonai demo`` trains ``stage`` with (``--demo``: the demo's raw step rates)."""
    from busmonai.demo import STAGE_PLAN

    bundle = "ldm" if stage == "ldm_mask_input" else stage
    return next((dict(settings) for name, _, _, settings in STAGE_PLAN if name == bundle), {})
TARGET_IMAGES_PER_S = 5.0
TARGET_GEMM_FRACTION = 0.5
TARGET_RSS_MB = 4096


def _parser(stage: str, configs: tuple[str, ...] = ("train.json",), **overrides: Any) -> Any:
    from monai.bundle import ConfigParser

    from busmonai.bundles import REPO_ROOT, bundle_config

    os.chdir(REPO_ROOT)
    parser = ConfigParser()
    parser.read_config([str(bundle_config(stage, name)) for name in configs])
    parser.update(overrides)
    return parser


def _timed_steps(step: Any, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def gemm_gflops(size: int = 1024, repeats: int = 20) -> float:
    """Dense float32 matrix-multiply rate (GFLOP/s) with the current thread setting."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = _timed_steps(lambda: torch.mm(a, b), 3, repeats)
    return 2 * size**3 / seconds / 1e9


def _latent_channels() -> int:
    """The autoencoder config's latent channels (the LDM reads them from a trained checkpoint)."""
    return int(_parser("autoencoder").get_parsed_content("latent_channels"))


def _unet_parts(stage: str, configs: tuple[str, ...] = ("train.json",), **overrides: Any) -> tuple[Any, Any, int, int, int]:
    parser = _parser(stage, configs, **({"latent_channels": _latent_channels()} | overrides))
    network = parser.get_parsed_content("network_def")
    text_encoder = parser.get_parsed_content("text_encoder")
    channels = parser.get_parsed_content("latent_channels")
    size = parser.get_parsed_content("image_size") // 4
    batch = parser.get_parsed_content("batch_size")
    return network, text_encoder, channels, size, batch


def measure_training(stage: str, repeats: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Training samples/s of one stage's networks at its configured batch size."""
    if stage in ("ldm", "ldm_mask_input", "controlnet"):
        mask_input = stage == "ldm_mask_input"
        network, text_encoder, channels, size, batch = (
            _unet_parts("ldm", ("train.json", "mask_input.json"), **(overrides or {})) if mask_input
            else _unet_parts("ldm", **(overrides or {})))
        context = text_encoder.encode(["breast ultrasound image of benign tumor with homogeneous echogenicity and clear boundary."] * batch)
        latents = torch.randn(batch, channels, size, size)
        timesteps = torch.randint(0, 1000, (batch,))
        if stage != "controlnet":
            trained = network
            mask = (torch.rand(batch, 1, size * 4, size * 4) > 0.7).float() if mask_input else None
            forward = lambda: network(latents, timesteps=timesteps, context=context, mask=mask)  # noqa: E731
        else:
            from busmonai.networks.described import build, describe

            ldm_parser = _parser("ldm", latent_channels=channels)
            # the ControlNet copies the UNet's sizes, which it reads from a trained LDM: give them
            parser = _parser("controlnet", latent_channels=channels, context_encoder=text_encoder,
                             unet_arch={k: v for k, v in describe(ldm_parser.get_parsed_content("unet_arch")).items()
                                        if k != "_target_"})
            controlnet = build(parser.get_parsed_content("controlnet_arch"))
            masks = (torch.rand(batch, 1, size * 4, size * 4) > 0.7).float()
            network.requires_grad_(False)
            trained = controlnet

            def forward() -> torch.Tensor:
                down, mid = controlnet(x=latents, timesteps=timesteps, controlnet_cond=masks, context=context)
                return network(latents, timesteps=timesteps, context=context, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid)
    elif stage == "autoencoder":
        parser = _parser(stage, **(overrides or {}))
        trained = parser.get_parsed_content("network_def")
        batch, size = parser.get_parsed_content("batch_size"), parser.get_parsed_content("image_size")
        images = torch.rand(batch, 1, size, size)
        forward = lambda: trained(images)[0]  # noqa: E731
    elif stage == "scmg":
        parser = _parser(stage, **(overrides or {}))
        trained = parser.get_parsed_content("generator_def")
        batch, size = parser.get_parsed_content("batch_size"), parser.get_parsed_content("image_size")
        z = torch.randn(batch, parser.get_parsed_content("latent_dim"))
        types = torch.randint(0, 2, (batch,))
        boxes = torch.zeros(batch, 1, size, size)
        boxes[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
        forward = lambda: trained(z, types, boxes)  # noqa: E731
    else:
        parser = _parser(stage, **(overrides or {}))
        trained = parser.get_parsed_content("network_def")
        batch, size = parser.get_parsed_content("batch_size"), parser.get_parsed_content("image_size")
        images = torch.rand(batch, 1, size, size)
        forward = lambda: trained(images)  # noqa: E731
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        output = forward()
        output = output[0] if isinstance(output, (tuple, list)) else output
        output.float().square().mean().backward()
        optimizer.step()

    seconds = _timed_steps(step, 2, repeats)
    parameters = sum(p.numel() for p in trained.parameters())
    return {"batch_size": batch, "seconds_per_step": round(seconds, 4), "samples_per_s": round(batch / seconds, 2),
            "parameters_m": round(parameters / 1e6, 2)}


def measure_sampling(steps: int, batches: list[int]) -> dict[str, Any]:
    """LDM sampling with guidance, and the UNet forward's FLOP rate vs GEMM."""
    from torch.utils.flop_counter import FlopCounterMode

    from busmonai.synthesis.sampling import ddim_sample, make_ddim

    network, text_encoder, channels, size, _ = _unet_parts("ldm")
    network.eval()
    prompt = "breast ultrasound image of malignant tumor with heterogeneous echogenicity and unclear boundary."
    results: list[dict[str, Any]] = []
    for memory_format in ("contiguous", "channels_last"):
        if memory_format == "channels_last":
            network = network.to(memory_format=torch.channels_last)
        for batch in batches:
            context = text_encoder.encode([prompt] * batch)
            scheduler = make_ddim(steps=steps)
            noise = torch.randn(batch, channels, size, size)
            if memory_format == "channels_last":
                noise = noise.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                ddim_sample(network, make_ddim(steps=2), noise, context)  # warm-up
                start = time.perf_counter()
                ddim_sample(network, scheduler, noise, context, guidance=3.0)
                seconds = time.perf_counter() - start
            results.append({"memory_format": memory_format, "batch": batch, "images_per_s": round(batch / seconds, 2)})
    best = max(results, key=lambda r: r["images_per_s"])
    # FLOP rate of one guided UNet forward (batch doubled by guidance) at the best batch size
    network = network.to(memory_format=torch.contiguous_format)
    batch = 2 * best["batch"]
    x = torch.randn(batch, channels, size, size)
    t = torch.full((batch,), 500)
    context = text_encoder.encode([prompt] * batch)
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            network(x, timesteps=t, context=context)
        flops = counter.get_total_flops()
        seconds = _timed_steps(lambda: network(x, timesteps=t, context=context), 2, 5)
    achieved = flops / seconds / 1e9
    gemm = gemm_gflops()
    return {"steps": steps, "guidance": 3.0, "runs": results, "best": best,
            "unet_forward": {"batch": batch, "gflop": round(flops / 1e9, 3), "seconds": round(seconds, 4),
                             "achieved_gflops": round(achieved, 2)},
            "gemm_gflops": round(gemm, 2), "gemm_fraction": round(achieved / gemm, 3)}


def child(stage: str, args: argparse.Namespace) -> None:
    """Run one measurement and print its JSON (peak RSS of this process included)."""
    torch.set_num_threads(args.threads)
    if stage == "sampling":
        result = measure_sampling(args.steps, args.batches)
    else:
        result = measure_training(stage, args.repeats, demo_overrides(stage) if args.demo else None)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["threads"] = torch.get_num_threads()
    print("BENCHMARK_JSON=" + json.dumps(result))


def run_child(stage: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "busmonai.experiments.benchmark", "--child", stage, "--threads", str(args.threads), "--steps", str(args.steps),
               "--repeats", str(args.repeats), "--batches", ",".join(map(str, args.batches))] + (["--demo"] if args.demo else [])
    run = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("BENCHMARK_JSON=")]
    if run.returncode != 0 or not lines:
        return {"error": run.stderr[-2000:]}
    return json.loads(lines[-1].split("=", 1)[1])


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables, with targets and misses."""
    lines = ["| stage | batch | training samples/s | parameters (M) | peak RSS (MB) |", "|---|---|---|---|---|"]
    for stage in STAGES:
        r = results["training"].get(stage)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {stage} | failed | | | |")
            continue
        flag = "" if r["peak_rss_mb"] <= TARGET_RSS_MB else " (over 4 GB)"
        lines.append(f"| {stage} | {r['batch_size']} | {r['samples_per_s']} | {r['parameters_m']} | {r['peak_rss_mb']}{flag} |")
    s = results["sampling"]
    if s and "error" not in s:
        best = s["best"]
        lines += ["", f"| LDM sampling ({s['steps']} DDIM steps, guidance 3) | images/s |", "|---|---|"]
        lines += [f"| batch {r['batch']}, {r['memory_format']} | {r['images_per_s']} |" for r in s["runs"]]
        miss = best["images_per_s"] / TARGET_IMAGES_PER_S
        lines += ["", f"Best sampling: {best['images_per_s']} images/s (batch {best['batch']}, {best['memory_format']}); "
                  f"target >= {TARGET_IMAGES_PER_S}: {'met' if miss >= 1 else f'missed, {miss:.0%} of it'}.",
                  f"UNet forward: {s['unet_forward']['gflop']} GFLOP per guided batch of {s['unet_forward']['batch']}, "
                  f"{s['unet_forward']['achieved_gflops']} GFLOP/s = {s['gemm_fraction']:.0%} of the measured GEMM rate "
                  f"{s['gemm_gflops']} GFLOP/s (target >= {TARGET_GEMM_FRACTION:.0%}: "
                  f"{'met' if s['gemm_fraction'] >= TARGET_GEMM_FRACTION else 'missed'}). Peak RSS {s['peak_rss_mb']} MB."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[16, 32, 64])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--demo", action="store_true",
                        help="measure each stage with the overrides busmonai demo trains it with (batch sizes)")
    parser.add_argument("--stages", type=lambda s: s.split(","), default=list(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (and 'sampling')")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args)
        return 0
    results = {"threads": args.threads, "training": {}, "sampling": {}}
    for stage in STAGES:
        if stage in args.stages:
            print(f"[benchmark] {stage} training ...", flush=True)
            results["training"][stage] = run_child(stage, args)
    if "sampling" in args.stages or args.stages == list(STAGES):
        print("[benchmark] LDM sampling ...", flush=True)
        results["sampling"] = run_child("sampling", args)
    table = markdown(results)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
