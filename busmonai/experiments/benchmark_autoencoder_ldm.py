"""Benchmark of the autoencoder and LDM bundles on real BUSI at 64 px on this machine (issue 3).

1. Prepares BUSI (``busmonai prepare busi --size 64``) unless ``--datalist`` is given.
2. Trains the autoencoder bundle (cpu profile) for ``--ae-minutes`` in a subprocess and prints
   PSNR / SSIM on its validation images (the seeded 10 % holdout of the training split), the
   training time, iterations and the subprocess's peak RSS. Targets: PSNR >= 30 dB, SSIM >= 0.90
   within 15 minutes on 2 cores.
3. Measures LDM training throughput side by side in this process, with the same UNet, batch and
   optimizer: steps on cached latents (what the bundle does) vs steps that encode every batch
   through the frozen autoencoder. Target: cached >= 1.5x.

Usage::

    python scripts/benchmark_autoencoder_ldm.py ../shared/data/Dataset_BUSI_with_GT --out runs/bench --json bench.json

It prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from busmonai.clinical.classes import IMAGE_CLASSES



def train_autoencoder(datalist: Path, out: Path, minutes: float, extra: dict) -> dict:
    """Train the autoencoder bundle in a child process; return its metrics, time and peak RSS (MB)."""
    from busmonai.pipeline import train_stage

    trained = train_stage("autoencoder", out.parent, datalist, minutes=minutes, overrides=extra, output_dir=out,
                          process=True)
    metrics = trained["metrics"]
    return {"wall_seconds": trained["seconds"], "train_seconds": metrics["seconds"],
            "iterations": metrics["iterations"], "epochs": metrics["epochs"],
            "val_psnr": metrics["validation"]["val_psnr"], "val_ssim": metrics["validation"]["val_ssim"],
            "best_psnr": metrics["best_metric"], "peak_rss_mb": trained["peak_rss_mb"]}


def ldm_throughput(datalist: Path, autoencoder_ckpt: Path, steps: int, batch_size: int) -> dict:
    """Training steps per second on cached latents vs encoding every batch (same UNet and batch)."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from busmonai.bundles import REPO_ROOT, bundle_config
    from busmonai.data.dataset import LoadPNGd, datalist_split
    from busmonai.engines.diffusion import DiffusionTrainer, make_context_fn
    from busmonai.engines.latents import cached_latents

    os.chdir(REPO_ROOT)
    parser = ConfigParser()
    parser.read_config(str(bundle_config("ldm", "train.json")))
    parser.update({"datalist": str(datalist), "autoencoder_ckpt": str(autoencoder_ckpt), "batch_size": batch_size})
    autoencoder = parser.get_parsed_content("autoencoder")
    network = parser.get_parsed_content("network")
    scheduler = parser.get_parsed_content("noise_scheduler")
    text_encoder = parser.get_parsed_content("text_encoder")
    items = datalist_split(datalist, "training", IMAGE_CLASSES, 64, keys=("image", "prompt"))
    context_fn = make_context_fn(text_encoder, [i["prompt"] for i in items])
    cache = cached_latents(autoencoder, autoencoder_ckpt, items, 64, Path("/tmp/busmonai_bench_latents.pt"), flips=True,
                           progress=False)
    network.set_scale_factor(cache["scale_factor"])
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    trainer = DiffusionTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=network, optimizer=optimizer,
                               noise_scheduler=scheduler, context_fn=context_fn)
    load = Compose([LoadPNGd(keys="image", image_size=64)])
    images = torch.stack([load(dict(i))["image"] for i in items])
    generator = torch.Generator().manual_seed(0)

    def run(encode: bool) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            index = torch.randint(0, len(items), (batch_size,), generator=generator)
            prompts = [items[int(k)]["prompt"] for k in index]
            if encode:  # what a trainer without the cache does every step
                batch = images[index]
                flip = torch.rand(batch_size, generator=generator) < 0.5
                batch = torch.where(flip[:, None, None, None], torch.flip(batch, dims=[-1]), batch)
                with torch.no_grad():
                    latents, _ = autoencoder.encode(batch)
            else:
                latents = cache["latents"][index]
            trainer.train_step({"latent": latents, "prompt": prompts})
        return steps / (time.perf_counter() - start)

    run(False)  # warm-up
    cached = run(False)
    encoded = run(True)
    return {"steps": steps, "batch_size": batch_size, "cached_steps_per_s": round(cached, 3),
            "encode_every_batch_steps_per_s": round(encoded, 3), "speedup": round(cached / encoded, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("busi", type=Path, nargs="?", help="BUSI folder (Dataset_BUSI_with_GT)")
    parser.add_argument("--datalist", type=Path, default=None, help="an already prepared 64 px datalist")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--ae-minutes", type=float, default=15.0)
    parser.add_argument("--ldm-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ae-set", action="append", default=[], metavar="KEY=JSON",
                        help="autoencoder bundle override, e.g. --ae-set latent_channels=8")
    parser.add_argument("--autoencoder-dir", type=Path, default=None,
                        help="reuse an autoencoder trained by scripts/benchmark_synthesis.py (its stage record and metrics)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out.resolve()
    from busmonai.data.prepare import datalist_or_prepare

    datalist = datalist_or_prepare(args.datalist, args.busi, out)
    extra = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.ae_set)}
    if args.autoencoder_dir is not None:
        folder = args.autoencoder_dir.resolve()
        metrics = json.loads((folder / "metrics.json").read_text())
        stage = json.loads((folder / "benchmark_stage.json").read_text())
        result = {"autoencoder": {"wall_seconds": stage["wall_seconds"], "train_seconds": metrics["seconds"],
                                  "iterations": metrics["iterations"], "epochs": metrics["epochs"],
                                  "val_psnr": metrics["validation"]["val_psnr"],
                                  "val_ssim": metrics["validation"]["val_ssim"], "best_psnr": metrics["best_metric"],
                                  "peak_rss_mb": stage["peak_rss_mb"], "reused": str(folder)}}
    else:
        folder = out / "autoencoder"
        result = {"autoencoder": train_autoencoder(datalist, folder, args.ae_minutes, extra)}
    result["ldm_throughput"] = ldm_throughput(datalist, folder / "model.pt", args.ldm_steps, args.batch_size)
    ae, ldm = result["autoencoder"], result["ldm_throughput"]
    print("\n| stage | figure | value | target |\n|---|---|---|---|")
    print(f"| autoencoder | validation PSNR (dB) | {ae['val_psnr']:.2f} (best {ae['best_psnr']:.2f}) | >= 30 |")
    print(f"| autoencoder | validation SSIM | {ae['val_ssim']:.3f} | >= 0.90 |")
    print(f"| autoencoder | training time (s) / iterations | {ae['train_seconds']:.0f} / {ae['iterations']} | <= 900 s |")
    print(f"| autoencoder | peak RSS (MB) | {ae['peak_rss_mb']:.0f} | |")
    print(f"| ldm | steps/s cached latents (batch {ldm['batch_size']}) | {ldm['cached_steps_per_s']:.3f} | |")
    print(f"| ldm | steps/s encoding every batch | {ldm['encode_every_batch_steps_per_s']:.3f} | |")
    print(f"| ldm | speed-up of the cache | {ldm['speedup']:.2f}x | >= 1.5x |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0
