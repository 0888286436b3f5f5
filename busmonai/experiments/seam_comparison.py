"""Lesions into real images: does latent blending hide the seam better than a pixel paste?

``busmonai generate --background`` synthesises only a region around each new mask and keeps the
real image elsewhere. Two ways of joining them (``--blend``): ``latent`` puts the real latent back,
noised to the current step, after every denoising step (RePaint without resampling: the region is
denoised in the context of the real tissue), then composes the real pixels outside; ``pixel`` draws
the sample freely and only pastes its region into the real image. For the same plan (same
backgrounds, masks, prompts and seeds) this prints, per method, the seam ratio
(:mod:`busmonai.metrics.seams`: gradient on the region's boundary ring relative to the real image's
there; 1 is seamless) and the adherence of a segmenter trained on real images (Dice with the new
mask), writes them to ``OUT/seams.json`` and draws ``OUT/seams.png`` (rows: the real image, the
mask, latent blending, pixel paste).

Usage::

    python scripts/seam_comparison.py --autoencoder-ckpt runs/autoencoder/model.pt \\
        --ldm-ckpt runs/ldm/model.pt --datalist data/busi64/datalist.json \\
        --segmenter runs/seg_real/model.pt --n 48 --out runs/seams
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from busmonai.bundles import bundle_config, run_config
from busmonai.synthesis.generate import BLENDS


def generate_with(blend: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``busmonai generate --background`` into ``out`` with one ``--blend``; returns its datalist."""
    overrides = {"output_dir": str(out.resolve()), "n": args.n, "mask_source": "real",
                 "datalist": str(Path(args.datalist).resolve()), "background": str(Path(args.datalist).resolve()),
                 "background_classes": args.background_classes, "blend": blend, "steps": args.steps,
                 "seed": args.seed, "image_size": args.image_size, "batch_size": args.batch_size,
                 "autoencoder_ckpt": str(Path(args.autoencoder_ckpt).resolve()),
                 "ldm_ckpt": str(Path(args.ldm_ckpt).resolve()), "mode": args.mode}
    if args.controlnet_ckpt:
        overrides["controlnet_ckpt"] = str(Path(args.controlnet_ckpt).resolve())
    run_config([bundle_config("controlnet", "inference.json")], **overrides)
    return json.loads((out / "datalist.json").read_text())


def _grey(path: str | Path) -> np.ndarray:
    from busmonai.data.imageio import load_gray

    return load_gray(Path(path))


def measure(out: Path, datalist: dict[str, Any], margin: int, segmenter: Any = None) -> dict[str, Any]:
    """Seam ratios and adherence of one generated set."""
    from busmonai.metrics.adherence import datalist_adherence
    from busmonai.metrics.seams import seam_ratios
    from busmonai.synthesis.generate import blend_regions

    entries = datalist["training"]
    masks = [_grey(out / e["mask"]) for e in entries]
    regions = blend_regions(entries, masks, margin)
    result = seam_ratios([_grey(out / e["image"]) for e in entries], [_grey(e["background"]) for e in entries],
                         list(regions))
    adherence = datalist_adherence(out / "datalist.json", segmenter)
    return {"seam_ratio": result, "adherence": {k: adherence[k] for k in ("mean", "std", "n") if k in adherence}}


def draw_sheet(outs: dict[str, Path], datalists: dict[str, dict[str, Any]], path: Path, n_columns: int = 6) -> Path:
    """Rows: the real images, the masks, then each method's images, for the first ``n_columns`` samples."""
    from busmonai.data.imageio import save_png
    from busmonai.visualize import grid

    first = next(iter(outs))
    entries = datalists[first]["training"][:n_columns]
    tiles = [_grey(e["background"]) for e in entries] + [_grey(outs[first] / e["mask"]) for e in entries]
    for blend in outs:
        tiles += [_grey(outs[blend] / e["image"]) for e in datalists[blend]["training"][:n_columns]]
    save_png(grid([t.astype(np.uint8) for t in tiles], ncols=len(entries), fill=255), path)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--autoencoder-ckpt", required=True)
    parser.add_argument("--ldm-ckpt", required=True)
    parser.add_argument("--controlnet-ckpt", default=None, help="for an LDM without the mask as an input channel")
    parser.add_argument("--datalist", required=True, help="prepared real datalist: backgrounds and masks")
    parser.add_argument("--segmenter", default=None, help="segmentation model.pt trained on real images (adherence)")
    parser.add_argument("--background-classes", choices=("normal", "tumor"), default="normal")
    parser.add_argument("--mode", choices=("full", "text"), default="full", help="as busmonai generate --mode")
    parser.add_argument("--blend-margin", type=int, default=3)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", default="runs/seams")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Generate with each blend, measure, print the table; exit 2 for bad input."""
    from busmonai.errors import BusmonaiInputError, find_input_error

    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (BusmonaiInputError, RuntimeError) as err:
        found = find_input_error(err)
        if found is None:
            raise
        print(f"error: {found}")
        return 2


def _main(args: argparse.Namespace) -> int:
    from busmonai.files import write_json_atomic

    segmenter = None
    if args.segmenter:
        from busmonai.metrics.sources import probability_fn
        from busmonai.networks.described import load_network

        segmenter = probability_fn(load_network(args.segmenter, "segmenter", "segmentation").eval(), "softmax")
    root = Path(args.out)
    outs, datalists, rows = {}, {}, {}
    for blend in BLENDS:
        start = time.perf_counter()
        outs[blend] = root / blend
        datalists[blend] = generate_with(blend, args, outs[blend])
        rows[blend] = {**measure(outs[blend], datalists[blend], args.blend_margin, segmenter),
                       "seconds": round(time.perf_counter() - start, 1)}
    report = {"n": args.n, "blend_margin": args.blend_margin, "background_classes": args.background_classes,
              "segmenter": args.segmenter or "fallback (Otsu)", "methods": rows}
    write_json_atomic(report, root / "seams.json")
    sheet = draw_sheet(outs, datalists, root / "seams.png")
    print(f"{'blend':<8} {'seam ratio (mean / median; 1 = seamless)':<42} {'adherence (Dice)':<18} seconds")
    for blend, row in rows.items():
        seam, adherence = row["seam_ratio"], row["adherence"]
        print(f"{blend:<8} {seam['mean']:.3f} / {seam['median']:.3f}{'':<28} "
              f"{adherence.get('mean', float('nan')):.3f} +- {adherence.get('std', float('nan')):.3f}  {row['seconds']}")
    print(f"wrote {root / 'seams.json'} and {sheet}")
    return 0
