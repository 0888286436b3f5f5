"""Benchmark of the whole generative chain on real BUSI at 64 px on this machine (issue 4).

Trains the autoencoder, LDM and ControlNet bundles (cpu profile) one after another on the BUSI
training split, each for a wall-clock budget, then generates ``--n`` labeled images per ablation
(full = text + mask, text only, mask only) from real training masks, and prints for each: time
per stage, sampling images/s, and mask adherence (Dice between the conditioning mask and a
segmentation of the generated image: ``busmonai.metrics.adherence``, with the downstream
segmenter when ``--segmenter`` is given, else the training-free fallback, which the table names).
Targets: the full model's adherence well above text-only's; the whole chain trains within 60
minutes on 2 cores.

Usage::

    python scripts/benchmark_synthesis.py ../shared/data/Dataset_BUSI_with_GT --out runs/bench_chain --json chain.json

Stages already trained in ``--out`` are reused with ``--reuse`` (their recorded times are
reported again), so the generation part can be re-run alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

STAGES = ("autoencoder", "ldm", "controlnet")


def train_stage(stage: str, datalist: Path, out: Path, minutes: float, reuse: bool) -> dict:
    """Train one bundle in a subprocess; return time, iterations and peak RSS (MB)."""
    from busmonai.pipeline import product_path
    from busmonai.pipeline import train_stage as train

    record = out / stage / "benchmark_stage.json"
    if reuse and record.is_file() and product_path(out, stage).is_file():
        return json.loads(record.read_text())
    trained = train(stage, out, datalist, minutes=minutes, process=True)
    result = {"wall_seconds": trained["seconds"], "iterations": trained["iterations"], "epochs": trained["epochs"],
              "peak_rss_mb": trained["peak_rss_mb"], "last_loss": trained["loss"], "validation": trained["validation"]}
    record.write_text(json.dumps(result, indent=1))
    return result


def generate_mode(out: Path, datalist: Path, mode: str, n: int, steps: int, guidance: float, batch_size: int) -> dict:
    """Generate ``n`` images in one ablation mode; return images/s and the output folder."""
    from busmonai.bundles import bundle_config, run_config
    from busmonai.pipeline import CHECKPOINT_KEYS, product_path, synthesis_needs
    from busmonai.synthesis.generate import generate_dataset, write_sheet

    target = out / f"synthetic_{mode}"
    overrides = {"datalist": str(datalist), "output_dir": str(target), "mode": mode, "n": n, "steps": steps,
                 "guidance": guidance, "batch_size": batch_size, "mask_source": "real",
                 **{CHECKPOINT_KEYS[need]: str(product_path(out, need)) for need in synthesis_needs()}}
    workflow = run_config([bundle_config("controlnet", "inference.json")], run=False, **overrides)
    settings = workflow.parser.get_parsed_content("settings")
    models = workflow.parser.get_parsed_content("models")
    start = time.perf_counter()
    generate_dataset(target, settings, models, sheet=False)
    seconds = time.perf_counter() - start
    if mode == "full":
        import numpy as np
        from PIL import Image

        entries = json.loads((target / "datalist.json").read_text())["training"]
        masks = [np.asarray(Image.open(target / e["mask"])) for e in entries[:6]]
        write_sheet(target, models, settings, masks)
    return {"seconds": round(seconds, 1), "images_per_s": round(n / seconds, 3), "folder": str(target)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("busi", type=Path, nargs="?", help="BUSI folder (Dataset_BUSI_with_GT)")
    parser.add_argument("--datalist", type=Path, default=None, help="an already prepared 64 px datalist")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_chain"))
    parser.add_argument("--minutes", type=float, nargs=3, default=(15.0, 25.0, 20.0), metavar=("AE", "LDM", "CN"))
    parser.add_argument("--n", type=int, default=64, help="images per ablation")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--segmenter", type=Path, default=None, help="segmentation model (TorchScript or state dict)")
    parser.add_argument("--segmenter-config", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="reuse stages already trained in --out")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out.resolve()
    from busmonai.data.prepare import datalist_or_prepare

    datalist = datalist_or_prepare(args.datalist, args.busi, out)
    result: dict = {"stages": {}, "modes": {}}
    for stage, minutes in zip(STAGES, args.minutes):
        result["stages"][stage] = train_stage(stage, datalist, out, minutes, args.reuse)
    from busmonai.metrics.adherence import datalist_adherence

    segmenter = None
    if args.segmenter is not None:
        from busmonai.bundles import load_bundle_network
        from busmonai.metrics import sources

        segmenter = sources.probability_fn(load_bundle_network(args.segmenter, args.segmenter_config, "segmenter"),
                                           "sigmoid")
    for mode in ("full", "text", "mask"):
        generated = generate_mode(out, datalist, mode, args.n, args.steps, args.guidance, args.batch_size)
        adherence = datalist_adherence(Path(generated["folder"]) / "datalist.json", segmenter,
                                       method=str(args.segmenter) if args.segmenter else None)
        result["modes"][mode] = {**generated, "adherence_mean": adherence["mean"], "adherence_std": adherence["std"],
                                 "adherence_method": adherence["method"]}
    total = sum(s["wall_seconds"] for s in result["stages"].values())
    print("\n| stage | wall time (s) | iterations | peak RSS (MB) |\n|---|---|---|---|")
    for stage, s in result["stages"].items():
        print(f"| {stage} | {s['wall_seconds']:.0f} | {s['iterations']} | {s['peak_rss_mb']:.0f} |")
    print(f"| **chain** | {total:.0f} (target <= 3600) | | |")
    print(f"\n| model | sampling images/s ({args.steps} DDIM steps, guidance {args.guidance}) | mask adherence (Dice) |")
    print("|---|---|---|")
    for mode, label in (("full", "full (text + mask)"), ("text", "text only"), ("mask", "mask only")):
        m = result["modes"][mode]
        print(f"| {label} | {m['images_per_s']:.2f} | {m['adherence_mean']:.3f} +- {m['adherence_std']:.3f} |")
    print(f"\nadherence by: {result['modes']['full']['adherence_method']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0
