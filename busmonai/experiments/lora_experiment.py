"""Cross-domain adaptation experiment: base vs full fine-tune vs LoRA r = 2, 4, 8 (issue 8).

CP (MICCAI 2025) adapts its BUSI-trained generator to UDIAT with LoRA on the UNet's attention
projections and reports FID / KID / trainable parameters (docs/method.md section 5): no adaptation
10.022 / 0.030; full fine-tune 8.088 / 0.024 / 859.52M; LoRA r=2 7.921 / 0.022 / 0.40M, r=4
7.599 / 0.020 / 0.80M, r=8 7.316 / 0.019 / 1.59M (MEDDAP picks r=4; LoRA: Hu et al. 2021).

This script runs the same comparison on this CPU, each arm with a wall-clock budget:

- **base**: the source LDM, unadapted.
- **full**: every UNet weight fine-tuned on the target's training split (``bundles/ldm`` started
  from the base weights, keeping the base latent scale).
- **LoRA r**: ``bundles/lora`` (adapter only, base frozen) for each rank.

Each arm then samples one image per held-out target image, with that image's prompt (seed = its
index, so every arm gets the same noise), and is scored against the target's held-out (test)
images with KID (primary: nearly unbiased for a few dozen images) and FID
(:func:`busmonai.metrics.fid.compute_fid_kid`). Trainable parameters, training time, iterations
and the child process's peak memory are recorded.

Target domain: by default the busmonai phantom prepared at 64 px (a second "scanner" with its own
speckle and anatomy, BUSI -> phantom), since UDIAT is not in ``../shared``; ``--target-datalist``
takes any datalist written by ``busmonai prepare`` (e.g. ``busmonai prepare udiat --root ...
--size 64``). Base models: ``--autoencoder-ckpt`` / ``--ldm-ckpt`` (default ``runs/...``); if
missing, ``--train-base-minutes M`` trains small ones on the source datalist (BUSI from
``../shared/data/Dataset_BUSI_with_GT`` prepared at 64 px unless ``--source-datalist`` is given).

Usage::

    python scripts/lora_experiment.py --out runs/lora_experiment --minutes 4 --json lora_experiment.json
    python scripts/lora_experiment.py --train-base-minutes 6 --minutes 3   # no trained base yet
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from busmonai.bundles import REPO_ROOT as REPO
from busmonai.clinical.classes import TUMOR_CLASSES

SHARED_BUSI = REPO.parent / "shared" / "data" / "Dataset_BUSI_with_GT"
IMAGE_SIZE = 64


def log(message: str) -> None:
    """Progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- data


def phantom_target(out: Path, n: int, seed: int) -> Path:
    """The busmonai phantom (``busmonai phantom``) prepared at 64 px: the default target domain."""
    from busmonai.data.phantom import write_phantom_dataset
    from busmonai.data.prepare import prepare_dataset

    datalist = out / "prepared" / "datalist.json"
    if not datalist.is_file():
        log(f"target domain: writing {n} phantom images to {out}")
        write_phantom_dataset(out / "raw" / "Dataset_BUSI_with_GT", n=n, seed=seed, progress=False)
        prepare_dataset("busi", out / "raw" / "Dataset_BUSI_with_GT", out / "prepared", size=IMAGE_SIZE,
                        progress=False)
    return datalist


def source_datalist(args: argparse.Namespace) -> Path:
    """The source (BUSI) datalist used to train missing base models."""
    from busmonai.data.prepare import prepare_dataset
    from busmonai.errors import BusmonaiInputError

    if args.source_datalist is not None:
        return args.source_datalist
    datalist = args.out / "source" / "datalist.json"
    if not datalist.is_file():
        if not SHARED_BUSI.is_dir():
            raise BusmonaiInputError(
                f"no source dataset to train the base models on: {SHARED_BUSI} is missing; pass "
                "--source-datalist (a datalist from 'busmonai prepare ... --size 64') or trained "
                "--autoencoder-ckpt / --ldm-ckpt")
        log(f"source domain: preparing BUSI at {IMAGE_SIZE} px")
        prepare_dataset("busi", SHARED_BUSI, datalist.parent, size=IMAGE_SIZE, progress=False)
    return datalist


def held_out(datalist: Path) -> list[dict[str, Any]]:
    """The target's held-out (test) tumor items with their prompts (the images FID/KID compares to)."""
    from busmonai.data.dataset import datalist_split

    return datalist_split(datalist, "test", TUMOR_CLASSES, image_size=IMAGE_SIZE, keys=("image", "prompt"))


# ------------------------------------------------------------------------------------- training


def ensure_base(args: argparse.Namespace) -> tuple[Path, Path]:
    """Paths of the base autoencoder and LDM, trained on the source if missing and allowed."""
    from busmonai.errors import BusmonaiInputError
    from busmonai.pipeline import product_path, train_stage

    ae, ldm = args.autoencoder_ckpt.resolve(), args.ldm_ckpt.resolve()
    if ae.is_file() and ldm.is_file():
        return ae, ldm
    if args.train_base_minutes <= 0:
        raise BusmonaiInputError(
            f"base models not found ({ae if not ae.is_file() else ldm}); train the autoencoder and LDM bundles "
            "on BUSI first, pass --autoencoder-ckpt / --ldm-ckpt, or add --train-base-minutes M to train small ones")
    source = source_datalist(args).resolve()
    base = args.out / "base"
    if not ae.is_file():
        ae = product_path(base, "autoencoder")
        if not ae.is_file():
            log(f"training the base autoencoder on {source} for {args.train_base_minutes} min")
            train_stage("autoencoder", base, source, minutes=args.train_base_minutes, process=True)
    if not ldm.is_file():
        ldm = product_path(base, "ldm")
        if not ldm.is_file():
            log(f"training the base LDM on {source} for {args.train_base_minutes} min")
            train_stage("ldm", base, source, minutes=args.train_base_minutes, process=True,
                        overrides={"autoencoder_ckpt": str(ae)})
    return ae, ldm


def train_arm(arm: str, rank: int | None, args: argparse.Namespace, target: Path, ae: Path, ldm: Path) -> dict:
    """Train one adapted arm; returns its run record (seconds, peak memory, iterations, trainable)."""
    from busmonai.pipeline import train_stage

    folder = args.out / arm
    common = {"autoencoder_ckpt": str(ae), "seed": args.seed, "preview_interval": 10_000}
    if rank is None:  # full fine-tune from the base weights, keeping the base latent scale
        overrides = {**common, "lr": args.full_lr, "warmup_steps": 50, "ema_decay": args.ema_decay,
                     "network": f"$busmonai.networks.described.load_network({str(ldm)!r}, 'ldm_ckpt', 'ldm')"
                                ".to(@device)",
                     "initialize": ["$monai.utils.set_determinism(seed=@seed)",
                                    "$pathlib.Path(@output_dir).mkdir(parents=True, exist_ok=True)"]}
        trained = train_stage("ldm", args.out, target, minutes=args.minutes, overrides=overrides, output_dir=folder,
                              process=True)
    else:
        overrides = {**common, "ldm_ckpt": str(ldm), "lora_rank": rank, "lora_targets": args.targets,
                     "lr": args.lora_lr, "ema_decay": args.ema_decay}
        trained = train_stage("lora", args.out, target, minutes=args.minutes, overrides=overrides, output_dir=folder,
                              process=True)
    record = {"seconds": trained["seconds"], "peak_rss_mb": trained["peak_rss_mb"],
              "iterations": trained["iterations"], "final_loss": trained["loss"]}
    if rank is not None:
        record["trainable_parameters"] = trained["metrics"]["trainable_parameters"]
        record["adapter_bytes"] = Path(trained["product"]).stat().st_size
    return record


# ------------------------------------------------------------------------------------- sampling


def load_arm(arm: str, rank: int | None, args: argparse.Namespace, ae: Path, ldm: Path) -> dict[str, Any]:
    """The sampling components of an arm, through the bundles' inference configs."""
    from busmonai.bundles import bundle_config, run_config

    common = {"autoencoder_ckpt": str(ae), "output_dir": str(args.out / arm / "inference")}
    if arm == "base":
        workflow = run_config([bundle_config("ldm", "inference.json")], run=False, ldm_ckpt=str(ldm), **common)
    elif rank is None:
        workflow = run_config([bundle_config("ldm", "inference.json")], run=False,
                              ldm_ckpt=str(args.out / arm / "model.pt"), **common)
    else:
        workflow = run_config([bundle_config("lora", "inference.json")], run=False, ldm_ckpt=str(ldm),
                              lora_adapter=str(args.out / arm / "adapter.safetensors"), merge=True, **common)
    parsed = {k: workflow.parser.get_parsed_content(k) for k in
              ("network", "autoencoder", "text_encoder", "noise_scheduler", "latent_channels", "latent_size",
               "device")}
    return parsed


def sample_arm(arm: str, parts: dict[str, Any], items: list[dict[str, Any]], args: argparse.Namespace) -> Path:
    """One image per held-out item, with its prompt and seed = its index; PNGs in ``<arm>/eval``."""
    import numpy as np

    from busmonai.data.imageio import save_png
    from busmonai.synthesis.sampling import sample_images

    folder = args.out / arm / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    shape = [parts["latent_channels"], parts["latent_size"], parts["latent_size"]]
    for start in range(0, len(items), args.batch_size):
        batch = items[start:start + args.batch_size]
        images = sample_images(parts["network"], parts["autoencoder"], parts["text_encoder"],
                               [i["prompt"] for i in batch], shape, list(range(start, start + len(batch))),
                               steps=args.steps, guidance=args.guidance, noise_scheduler=parts["noise_scheduler"],
                               device=parts["device"])
        for k, image in enumerate(images):
            save_png((image[0].cpu().numpy() * 255).round().astype(np.uint8), folder / f"{start + k:04d}.png")
    return folder


# ---------------------------------------------------------------------------------------- table


def format_table(rows: list[dict[str, Any]], target: str) -> str:
    """The papers' table shape: method, FID, KID, trainable parameters, plus time and memory."""
    lines = [f"Cross-domain adaptation, target {target} (held-out test images; KID primary)",
             f"{'Method':<16}{'KID':>16}{'FID':>10}{'Trainable':>12}{'Iters':>7}{'Train s':>9}{'Peak MB':>9}"]
    for row in rows:
        trainable = row.get("trainable_parameters")
        params = "-" if not trainable else (f"{trainable / 1e6:.2f}M" if trainable >= 1e5 else f"{trainable / 1e3:.1f}K")
        lines.append(f"{row['method']:<16}{row['kid']:>9.4f}±{row['kid_std']:<6.4f}{row['fid']:>10.3f}{params:>12}"
                     f"{row.get('iterations') or 0:>7}{row.get('seconds', 0):>9.0f}"
                     f"{row.get('peak_rss_mb', float('nan')):>9.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the experiment, print the table, write JSON."""
    from busmonai.errors import BusmonaiInputError
    from busmonai.metrics.fid import compute_fid_kid

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lora_experiment"))
    parser.add_argument("--target-datalist", type=Path, default=None,
                        help="target-domain datalist at 64 px (default: the phantom, written to OUT/target)")
    parser.add_argument("--phantom-n", type=int, default=200, help="phantom images for the default target")
    parser.add_argument("--source-datalist", type=Path, default=None, help="source datalist to train a missing base")
    parser.add_argument("--autoencoder-ckpt", type=Path, default=Path("runs/autoencoder/model.pt"))
    parser.add_argument("--ldm-ckpt", type=Path, default=Path("runs/ldm/model.pt"))
    parser.add_argument("--train-base-minutes", type=float, default=0.0,
                        help="train missing base models on the source for this many minutes each")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget per adapted arm")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--targets", default="attention", help="LoRA targets: attention | cross_attention | names")
    parser.add_argument("--no-full", action="store_true", help="skip the full fine-tuning arm")
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--full-lr", type=float, default=2e-4)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps when sampling")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-eval", type=int, default=0, help="cap on held-out images (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads here and in the training processes (0: torch's default); "
                             "1 is much faster when other jobs share the cores")
    parser.add_argument("--json", type=Path, default=None, help="results JSON (default OUT/results.json)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if args.threads > 0:
        import os

        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the bundle processes
        torch.set_num_threads(args.threads)
    try:
        start = time.perf_counter()
        ae, ldm = ensure_base(args)
        target = (args.target_datalist or phantom_target(args.out / "target", args.phantom_n, args.seed)).resolve()
        items = held_out(target)
        if args.max_eval:
            items = items[:args.max_eval]
        if len(items) < 2:
            raise BusmonaiInputError(f"{target}: fewer than two held-out (test) images to score against")
        arms: list[tuple[str, str, int | None]] = [("base", "no adaptation", None)]
        if not args.no_full:
            arms.append(("full", "full fine-tune", None))
        arms += [(f"lora_r{r}", f"LoRA r={r}", r) for r in args.ranks]
        from busmonai.networks.lora import count_parameters, unet_of

        rows = []
        for arm, method, rank in arms:
            record: dict[str, Any] = {"method": method, "arm": arm}
            if arm != "base":
                log(f"[{arm}] training for {args.minutes} min")
                record.update(train_arm(arm, rank, args, target, ae, ldm))
            parts = load_arm(arm, rank, args, ae, ldm)
            if arm == "full":
                record["trainable_parameters"] = count_parameters(unet_of(parts["network"]))
            log(f"[{arm}] sampling {len(items)} images")
            fake = sample_arm(arm, parts, items, args)
            scores = compute_fid_kid(target, fake, size=IMAGE_SIZE, split="test", progress=False,
                                     subset_size=min(1000, len(items)), cache=True)
            record.update({k: scores[k] for k in ("fid", "kid", "kid_std", "n_real", "n_fake")})
            rows.append(record)
            log(f"[{arm}] KID {record['kid']:.4f} FID {record['fid']:.3f}")
        table = format_table(rows, str(target))
        print(table)
        base_kid = rows[0]["kid"]
        better = [r["method"] for r in rows if r["arm"].startswith("lora") and r["kid"] < base_kid]
        print(f"LoRA beats the unadapted base on KID: {', '.join(better) if better else 'no'}; "
              f"total {time.perf_counter() - start:.0f} s")
        result = {"target": str(target), "autoencoder_ckpt": str(ae), "ldm_ckpt": str(ldm),
                  "minutes_per_arm": args.minutes, "steps": args.steps, "guidance": args.guidance,
                  "lora_targets": args.targets, "n_eval": len(items), "rows": rows,
                  "lora_beats_base_kid": better, "total_seconds": round(time.perf_counter() - start, 1)}
        path = args.json or args.out / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(f"-> {path}")
    except BusmonaiInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
