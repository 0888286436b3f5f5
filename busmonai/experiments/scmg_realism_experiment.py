"""Train SCMG recipe variants and measure how real their masks look, one table.

Usage::

    python scripts/scmg_realism_experiment.py --datalist D.json [--minutes 8]
        [--variants baseline,soft_prior,...] [--seeds 2] [--rects 0] [--out runs/scmg_realism]
        [--threads 2] [--set KEY=VALUE ...] [--skip-training]

For every variant (``VARIANTS``: a set of ``bundles/scmg/configs/train.json`` overrides; the
recipe switches are documented in ``bundles/scmg/docs/README.md``) this driver

1. trains SCMG for ``--minutes`` (``python -m monai.bundle run --config_file
   bundles/scmg/configs/train.json --max_minutes M --resume false ...``, from the repository
   root, one variant after the other, ``--threads`` threads each) into ``OUT/<variant>/run``;
2. draws ``--seeds`` masks for each training rectangle of each class (all of them, or a seeded
   sample of ``--rects`` per class) with the function behind ``busmonai masks --method scmg
   --label CLASS --bbox RECT --n SEEDS`` (:func:`busmonai.synthesis.masks.write_masks`, called
   in-process: one process start per rectangle would dominate the run), one ``busmonai masks``
   folder per rectangle under ``OUT/<variant>/masks``; so every generated mask pairs exactly with
   its real training mask, and the seeds of one rectangle give the diversity;
3. runs ``busmonai evaluate masks DATALIST OUT/<variant>/masks --json ... --sheet ...``
   (log in ``OUT/<variant>/evaluate.log``, sheet ``OUT/<variant>/realism.png``);
4. prints one row per variant and writes ``OUT/table.json``.

Columns: training iterations; the two-sample AUCs (lesion crop and whole image; 0.5 =
indistinguishable from the real masks); generated curvature per class and the malignant - benign
gap (real in the header line); the mean over the shape statistics and classes of the
Wasserstein-1 distance in pooled standard deviations; the bounding-rectangle IoU; the
same-rectangle IoU across seeds per class (lower = more diverse; the real reference of similar
rectangles in the header line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from busmonai.clinical.classes import TUMOR_CLASSES
from busmonai.errors import BusmonaiInputError
from busmonai.files import write_json_atomic

from busmonai.bundles import REPO_ROOT as REPO
CLASSES = TUMOR_CLASSES
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "soft_prior": {"bbox_map_blur": 0.03},
    "augment": {"aug_rotate_deg": 15.0, "aug_scale": 0.1},
    "cur_malignant_x2": {"cur_class_weights": [1.0, 2.0]},
    "spatial_only": {"d_branch_weights": [1.0, 0.0]},
    "fourier_only": {"d_branch_weights": [0.0, 1.0]},
    "combined": {"bbox_map_blur": 0.03, "aug_rotate_deg": 15.0, "aug_scale": 0.1, "cur_class_weights": [1.0, 2.0]},
    "mode_seeking": {"mode_seeking_weight": 1.0},
    "mode_seeking_0.2": {"mode_seeking_weight": 0.2},
    "no_curvature": {"cur_weight": 0.0},
    "ema": {"g_ema_decay": 0.999},
}
"""Variant name -> bundle overrides (the defaults of ``train.json`` are the baseline)."""
ELLIPSE = "ellipse"
"""The row of the elliptic masks (``busmonai masks --method ellipse --bbox RECT``): nothing to train."""


def train(name: str, overrides: dict[str, Any], datalist: Path, folder: Path, minutes: float, image_size: int,
          threads: int) -> dict[str, Any]:
    """Train one variant in a child process with ``threads`` threads; return its ``metrics.json``
    with the wall time."""
    from busmonai.pipeline import train_stage

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # the child's threads
    print(f"training '{name}' for {minutes} min -> {folder}", flush=True)
    record = train_stage("scmg", folder.parent, datalist, minutes=minutes, output_dir=folder, process=True,
                         overrides={"image_size": image_size, **overrides})
    return {**record["metrics"], "wall_seconds": record["seconds"]}


def relative_to_cwd(value: Any) -> Any:
    """``value`` (JSON data) with every absolute path below the working directory written relative
    to it, so that a table made with relative arguments names no machine's folders."""
    cwd = Path.cwd().resolve()
    if isinstance(value, dict):
        return {k: relative_to_cwd(v) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_to_cwd(v) for v in value]
    if isinstance(value, str) and value.startswith("/") and Path(value).is_relative_to(cwd):
        return str(Path(value).relative_to(cwd))
    return value


def training_rectangles(datalist: Path, rects: int, seed: int) -> dict[str, list[list[int]]]:
    """Per class, the ``bbox`` of the training masks (all, or a seeded sample of ``rects``)."""
    data = json.loads(datalist.read_text())
    rng = np.random.default_rng(seed)
    out = {}
    for cls in CLASSES:
        boxes = [list(item["bbox"]) for item in data.get("training", []) if item.get("class") == cls and item.get("bbox")]
        if not boxes:
            raise BusmonaiInputError(f"{datalist}: no {cls} training masks with a bbox; pass a prepared datalist")
        if 0 < rects < len(boxes):
            boxes = [boxes[i] for i in sorted(rng.choice(len(boxes), rects, replace=False))]
        out[cls] = boxes
    return out


def draw(checkpoint: Path | None, rectangles: dict[str, list[list[int]]], out: Path, size: int, seeds: int,
         seed: int) -> int:
    """``busmonai masks --method scmg --bbox RECT --n SEEDS`` per rectangle, one folder each
    (``--method ellipse`` when ``checkpoint`` is None)."""
    from busmonai.synthesis.masks import write_masks

    n = 0
    method = "ellipse" if checkpoint is None else "scmg"
    for cls, boxes in rectangles.items():
        for index, box in enumerate(boxes):
            try:
                write_masks(method, cls, seeds, out / f"{cls}_{index + 1:04d}", size=size, seed=seed + index,
                            bbox=tuple(box), checkpoint=checkpoint, progress=False)
            except BusmonaiInputError:
                if method == "scmg":
                    raise
                continue  # the ellipse's class orientation rule cannot fill this rectangle: counted, not drawn
            n += seeds
    return n


def evaluate(datalist: Path, masks: Path, folder: Path, seed: int, threads: int) -> dict[str, Any]:
    """``busmonai evaluate masks`` on one variant's masks; return its JSON figures."""
    report = folder / "realism.json"
    args = [sys.executable, "-m", "busmonai.cli", "evaluate", "masks", str(datalist), str(masks),
            "--json", str(report), "--sheet", str(folder / "realism.png"), "--seed", str(seed)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    run = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    (folder / "evaluate.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        raise RuntimeError(f"busmonai evaluate masks failed for {masks} (exit {run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads(report.read_text())


def summary_row(name: str, training: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The table's figures of one variant."""
    shape = result["shape"]
    rel = [entry["wasserstein_rel"] for cls in shape.values() for entry in cls.values()]
    curvature = result["curvature"]
    diversity = result["diversity"]["generated"]
    return {
        "variant": name,
        "iterations": training.get("iterations"),
        "auc_lesion": result["two_sample"]["lesion"]["auc"],
        "auc_image": result["two_sample"]["image"]["auc"],
        "kappa_benign": curvature.get("benign", {}).get("generated", {}).get("mean"),
        "kappa_malignant": curvature.get("malignant", {}).get("generated", {}).get("mean"),
        "gap": curvature.get("gap", {}).get("generated"),
        "w1_rel_mean": float(np.mean(rel)),
        "rect_iou": (result["rect_iou"] or {}).get("mean"),
        "div_benign": diversity.get("benign", {}).get("iou"),
        "div_malignant": diversity.get("malignant", {}).get("iou"),
    }


def print_table(rows: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    """One line per variant (see the module docstring for the columns)."""
    def cell(value: Any, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    curv, div = reference["curvature"], reference["diversity"]["real"]
    real_k = {c: curv[c]["real"]["mean"] for c in CLASSES if c in curv}
    print(f"\nreal (training): kappa benign {cell(real_k.get('benign'), '.4f')}, malignant "
          f"{cell(real_k.get('malignant'), '.4f')}, gap {cell(curv.get('gap', {}).get('real'), '+.4f')}; "
          f"similar-rectangle IoU benign {cell(div.get('benign', {}).get('iou'), '.3f')}, "
          f"malignant {cell(div.get('malignant', {}).get('iou'), '.3f')}")
    header = (f"{'variant':<18}{'iters':>7}{'AUC les':>9}{'AUC img':>9}{'kappa B':>9}{'kappa M':>9}{'gap':>9}"
              f"{'W1/sd':>7}{'rectIoU':>9}{'div B':>7}{'div M':>7}")
    print(header)
    for r in rows:
        print(f"{r['variant']:<18}{cell(r['iterations'], 'd'):>7}{cell(r['auc_lesion'], '.3f'):>9}"
              f"{cell(r['auc_image'], '.3f'):>9}{cell(r['kappa_benign'], '.4f'):>9}{cell(r['kappa_malignant'], '.4f'):>9}"
              f"{cell(r['gap'], '+.4f'):>9}{cell(r['w1_rel_mean'], '.2f'):>7}{cell(r['rect_iou'], '.3f'):>9}"
              f"{cell(r['div_benign'], '.3f'):>7}{cell(r['div_malignant'], '.3f'):>7}")
    print("AUC: two-sample classifier on held-out masks (0.5 = like the real masks); W1/sd: mean Wasserstein "
          "distance of the shape statistics in pooled sd; div: same-rectangle IoU across seeds (lower = more diverse)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", type=Path, required=True, help="a prepared datalist (64 px for the cpu profile)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "scmg_realism", help="output folder")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget of each variant (default 8)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)} "
                        f"and {ELLIPSE} (the elliptic masks, nothing trained)")
    parser.add_argument("--seeds", type=int, default=2, help="masks per training rectangle (default 2)")
    parser.add_argument("--rects", type=int, default=0, help="training rectangles per class (default 0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="threads of each training / evaluation process")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="bundle setting for every variant, e.g. --set rect_weight=0.5 (repeatable)")
    parser.add_argument("--skip-training", action="store_true", help="re-use the runs already in --out")
    args = parser.parse_args(argv)
    try:
        names = [n.strip() for n in args.variants.split(",") if n.strip()]
        unknown = [n for n in names if n not in VARIANTS and n != ELLIPSE]
        if unknown or not names:
            raise BusmonaiInputError(f"--variants: unknown {unknown or 'empty'}; choose from "
                                     f"{', '.join([*VARIANTS, ELLIPSE])}")
        if args.seeds < 2:
            raise BusmonaiInputError(f"--seeds {args.seeds}: the diversity needs at least 2 masks per rectangle")
        datalist = args.datalist.resolve()
        if not datalist.is_file():
            raise BusmonaiInputError(f"{datalist}: datalist not found; run 'busmonai prepare ... --size 64' first")
        size = int(json.loads(datalist.read_text()).get("size", [64])[0])
        common = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise BusmonaiInputError(f"--set {item!r}: expected KEY=VALUE")
            common[key] = value
        rectangles = training_rectangles(datalist, args.rects, args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        rows, results = [], {}
        for name in names:
            folder = (args.out / name).resolve()
            run_dir = folder / "run"
            overrides = {} if name == ELLIPSE else {**common, **VARIANTS[name]}
            if name == ELLIPSE:
                training: dict[str, Any] = {"iterations": 0}
            elif args.skip_training:
                training = json.loads((run_dir / "metrics.json").read_text())
            else:
                training = train(name, overrides, datalist, run_dir, args.minutes, size, args.threads)
            masks = folder / "masks"
            if masks.exists():  # this script's own folder: stale rectangles of an earlier run go
                shutil.rmtree(masks)
            start = time.perf_counter()
            n = draw(None if name == ELLIPSE else run_dir / "model.pt", rectangles, masks, size, args.seeds, args.seed)
            result = evaluate(datalist, masks, folder, args.seed, args.threads)
            wanted = args.seeds * sum(len(boxes) for boxes in rectangles.values())
            if n < wanted:  # only the ellipse skips rectangles (see draw)
                training = {**training, "rectangles_not_drawn": (wanted - n) // args.seeds}
            print(f"  {name}: {training.get('iterations')} iterations, {n} masks drawn and evaluated in "
                  f"{time.perf_counter() - start:.0f} s"
                  + (f" ({(wanted - n) // args.seeds} rectangles the method cannot fill)" if n < wanted else ""),
                  flush=True)
            results[name] = {"overrides": overrides, "training": training, "realism": result}
            rows.append(summary_row(name, training, result))
        print_table(rows, next(iter(results.values()))["realism"])
        table = {"settings": vars(args) | {"datalist": str(datalist), "out": str(args.out)}, "rows": rows,
                 "variants": results}
        table = json.loads(json.dumps(table, default=str))
        write_json_atomic(relative_to_cwd(table), args.out / "table.json")
        print(f"wrote {args.out / 'table.json'}")
    except BusmonaiInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
