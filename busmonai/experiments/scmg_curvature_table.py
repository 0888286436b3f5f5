"""The SCMG paper's curvature table, reproduced on real BUSI masks at 64 px.

Usage::

    python scripts/scmg_curvature_table.py [--datalist D.json | --root BUSI_FOLDER] [--minutes 8]
        [--n 200] [--out runs/scmg_curvature] [--sequential]

The SCMG paper (Medical Image Analysis 2025, "Breast Ultrasound Tumor Generation via Mask
Generator and Text-Guided Network") reports the mean absolute boundary curvature of generated
masks per class: benign 0.619 +- 0.173 vs malignant 0.831 +- 0.125 with the curvature loss,
0.723 vs 0.721 without (real: 0.679 vs 0.789). This script

1. prepares BUSI at 64 px (``busmonai prepare busi``) unless ``--datalist`` is given;
2. trains ``bundles/scmg`` twice with the same wall-clock budget, ``--cur_weight`` at its
   default and at 0 (``python -m monai.bundle run`` from the repository root; by default both
   runs in parallel, one thread each, so they share the CPU alike);
3. draws ``--n`` masks per class from each generator, for rectangles taken from the *test*
   split's masks of that class (resampled), thresholded at 0.5, largest component, *not*
   clipped to the rectangle;
4. prints and writes (``OUT/table.json``): per class, the mean +- std curvature
   (:func:`busmonai.clinical.curvature.boundary_curvature`, the measure of the loss) of the
   real training and test masks and of the generated masks with and without ``L_cur``, the
   benign-malignant gap and a Welch t-test; the IoU of each generated mask's bounding box with
   the requested rectangle; and a mask-realism distance against the test masks: for area
   fraction, eccentricity, solidity (``skimage.measure.regionprops``) and curvature, the
   1-D Wasserstein distance between the generated and real distributions divided by the real
   standard deviation, and their mean.

Our curvature measure is scale-free and smooth (see :mod:`busmonai.clinical.curvature`); its
values are not the papers' (0.6-0.8), only the ordering and the relative gaps compare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import stats
from skimage.measure import label as cc_label
from skimage.measure import regionprops

from busmonai.clinical.bbox import bbox_iou, mask_bbox
from busmonai.clinical.curvature import boundary_curvature
from busmonai.engines.scmg import mask_items
from busmonai.networks.scmg import binarize_masks, generate_soft_masks
from busmonai.synthesis.masks import load_generator
from busmonai.errors import BusmonaiInputError
from busmonai.networks.scmg import TUMOR_TYPES

from busmonai.bundles import REPO_ROOT as REPO
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "Dataset_BUSI_with_GT"
IMAGE_SIZE = 64
IOU_TARGET = 0.7
FEATURES = ("area_fraction", "eccentricity", "solidity", "curvature")
PAPER = {"real": (0.679, 0.789), "with L_cur": (0.619, 0.831), "without L_cur": (0.723, 0.721)}
RUNS = {"with L_cur": None, "without L_cur": 0.0}  # None: the bundle's default cur_weight


def load_mask(path: str) -> np.ndarray:
    """A prepared mask PNG as a boolean array."""
    return np.asarray(Image.open(path).convert("L")) > 127


def shape_features(mask: np.ndarray) -> dict[str, float]:
    """Area fraction, eccentricity, solidity (largest component) and curvature of one mask."""
    labels = cc_label(mask)
    region = max(regionprops(labels), key=lambda r: r.area)
    return {
        "area_fraction": float(region.area) / mask.size,
        "eccentricity": float(region.eccentricity),
        "solidity": float(region.solidity),
        "curvature": boundary_curvature(labels == region.label),
    }


def summary(values: list[float]) -> dict[str, float]:
    """Mean, population std and count."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def realism(generated: list[dict[str, float]], real: list[dict[str, float]]) -> dict[str, float]:
    """Per-feature Wasserstein distance / real std, and their mean (0 = same distributions)."""
    out = {}
    for name in FEATURES:
        g = np.array([f[name] for f in generated])
        r = np.array([f[name] for f in real])
        out[name] = float(stats.wasserstein_distance(g, r) / max(r.std(), 1e-8))
    out["mean"] = float(np.mean([out[n] for n in FEATURES]))
    return out


def train_runs(datalist: Path, out: Path, minutes: float, sequential: bool, threads: int,
               overrides: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train the bundle once per entry of ``RUNS`` (side by side unless ``sequential``), each in a
    child process with ``threads`` threads; return each run's folder and metrics.

    ``overrides`` are ``KEY=VALUE`` bundle settings (values as JSON) applied to both runs.
    """
    from concurrent.futures import ThreadPoolExecutor

    from busmonai.pipeline import train_stage

    settings = {"image_size": IMAGE_SIZE}
    for item in overrides or []:
        key, _, value = item.partition("=")
        try:
            settings[key] = json.loads(value)
        except ValueError:
            settings[key] = value
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # the children's threads

    def run(name: str) -> dict[str, Any]:
        weight = RUNS[name]
        folder = out / ("scmg_cur" if weight is None else "scmg_nocur")
        print(f"training '{name}' for {minutes} min -> {folder}", flush=True)
        record = train_stage("scmg", out, datalist, minutes=minutes, output_dir=folder, process=True,
                             overrides={**settings, **({} if weight is None else {"cur_weight": weight})})
        print(f"  {name}: {record['iterations']} iterations in {record['seconds']} s", flush=True)
        return {"dir": str(folder), "wall_seconds": record["seconds"], **record["metrics"]}

    with ThreadPoolExecutor(max_workers=1 if sequential else len(RUNS)) as pool:
        futures = {name: pool.submit(run, name) for name in RUNS}
    return {name: future.result() for name, future in futures.items()}


def evaluate(run_dirs: dict[str, str], datalist: Path, n: int, seed: int) -> dict[str, Any]:
    """Generate ``n`` masks per class per run for test rectangles and measure them."""
    rng = np.random.default_rng(seed)
    train_items = mask_items(datalist, "training", IMAGE_SIZE)
    test_items = mask_items(datalist, "test", IMAGE_SIZE)
    result: dict[str, Any] = {"real_train": {}, "real_test": {}, "runs": {}}
    real_features: dict[str, list[dict[str, float]]] = {}
    requests: dict[str, np.ndarray] = {}
    for k, name in enumerate(TUMOR_TYPES):
        train = [load_mask(i["mask"]) for i in train_items if int(i["label"]) == k]
        test = [load_mask(i["mask"]) for i in test_items if int(i["label"]) == k]
        result["real_train"][name] = summary([boundary_curvature(m) for m in train])
        real_features[name] = [shape_features(m) for m in test]
        result["real_test"][name] = summary([f["curvature"] for f in real_features[name]])
        boxes = np.array([i["bbox"] for i in test_items if int(i["label"]) == k])
        requests[name] = boxes[rng.integers(0, len(boxes), n)]
    for run, folder in run_dirs.items():
        generator = load_generator(Path(folder) / "model.pt")
        entry: dict[str, Any] = {"targets": dict(zip(TUMOR_TYPES, generator.curvature_targets.tolist()))}
        for k, name in enumerate(TUMOR_TYPES):
            boxes = torch.from_numpy(requests[name]).long()
            soft = generate_soft_masks(generator, torch.full((n,), k, dtype=torch.long), boxes, seed=seed + k)
            empty = int((soft.flatten(1).amax(1) <= 0.5).sum())
            masks = binarize_masks(soft)
            feats = [shape_features(m) for m in masks]
            ious = [bbox_iou(mask_bbox(m), b) for m, b in zip(masks, requests[name].tolist())]
            entry[name] = {
                "curvature": summary([f["curvature"] for f in feats]),
                "iou": {**summary(ious), "frac_ge_target": float(np.mean(np.array(ious) >= IOU_TARGET))},
                "realism": realism(feats, real_features[name]),
                "empty_before_fallback": empty,
                "_values": [f["curvature"] for f in feats],
            }
        b, m = entry["benign"]["_values"], entry["malignant"]["_values"]
        test = stats.ttest_ind(m, b, equal_var=False)
        entry["gap"] = float(np.mean(m) - np.mean(b))
        entry["welch_t"], entry["p_value"] = float(test.statistic), float(test.pvalue)
        for name in TUMOR_TYPES:
            entry[name].pop("_values")
        result["runs"][run] = entry
    return result


def print_table(result: dict[str, Any], training: dict[str, dict[str, Any]]) -> None:
    """The curvature table, rectangle adherence and realism, as plain text."""
    def cell(s: dict[str, float]) -> str:
        return f"{s['mean']:.4f} +- {s['std']:.4f}"

    print("\nMean absolute boundary curvature (1 / canonical px; busmonai.clinical.curvature), 64 px BUSI")
    print(f"{'masks':<28}{'benign':>22}{'malignant':>22}{'gap (M - B)':>14}   paper (B / M)")
    rows = [("real, training (targets)", result["real_train"], PAPER["real"]),
            ("real, test", result["real_test"], PAPER["real"])]
    for run in RUNS:
        rows.append((f"generated, {run}", {t: result["runs"][run][t]["curvature"] for t in TUMOR_TYPES}, PAPER[run]))
    for name, values, paper in rows:
        gap = values["malignant"]["mean"] - values["benign"]["mean"]
        print(f"{name:<28}{cell(values['benign']):>22}{cell(values['malignant']):>22}{gap:>+14.4f}   "
              f"{paper[0]:.3f} / {paper[1]:.3f}")
    for run in RUNS:
        r = result["runs"][run]
        print(f"  {run}: Welch t = {r['welch_t']:.2f}, p = {r['p_value']:.2g} (malignant vs benign)")
    print(f"\nRectangle adherence: IoU of the generated mask's bbox with the requested (test) rectangle, "
          f"target >= {IOU_TARGET}")
    print(f"{'run':<16}{'class':<11}{'mean IoU':>10}{'>= 0.7':>9}{'empty':>7}"
          f"{'realism: area':>15}{'ecc':>7}{'solid':>7}{'curv':>7}{'mean':>7}")
    for run in RUNS:
        for t in TUMOR_TYPES:
            e = result["runs"][run][t]
            rl = e["realism"]
            print(f"{run:<16}{t:<11}{e['iou']['mean']:>10.3f}{e['iou']['frac_ge_target']:>9.2f}"
                  f"{e['empty_before_fallback']:>7d}{rl['area_fraction']:>15.3f}{rl['eccentricity']:>7.3f}"
                  f"{rl['solidity']:>7.3f}{rl['curvature']:>7.3f}{rl['mean']:>7.3f}")
    print("realism = Wasserstein distance to the test masks' feature distribution / its std (lower is better)")
    for run, info in training.items():
        print(f"training {run}: {info['iterations']} iterations, {info['wall_seconds']} s, "
              f"cur_weight {info.get('cur_weight')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", type=Path, default=None, help="a 64 px BUSI datalist (else prepared from --root)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="BUSI folder to prepare at 64 px")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "scmg_curvature", help="output folder")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget of each run (default 8)")
    parser.add_argument("--n", type=int, default=200, help="generated masks per class (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequential", action="store_true", help="train one run after the other (2 threads each)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="bundle setting for both runs, e.g. --set rect_weight=0.5 (repeatable)")
    parser.add_argument("--skip-training", action="store_true", help="evaluate the runs already in --out")
    args = parser.parse_args(argv)
    try:
        start = time.perf_counter()
        args.out.mkdir(parents=True, exist_ok=True)
        datalist = args.datalist
        if datalist is None:
            from busmonai.data.prepare import prepare_dataset

            datalist = args.out / "busi64" / "datalist.json"
            if not datalist.is_file():
                prepare_dataset("busi", args.root, datalist.parent, size=IMAGE_SIZE, seed=args.seed)
        folders = {run: args.out / ("scmg_cur" if w is None else "scmg_nocur") for run, w in RUNS.items()}
        if args.skip_training:
            training = {run: {"dir": str(f), "wall_seconds": None, **json.loads((f / "metrics.json").read_text())}
                        for run, f in folders.items()}
        else:
            training = train_runs(datalist, args.out, args.minutes, args.sequential, 2 if args.sequential else 1,
                                  args.set)
        torch.set_num_threads(2)
        eval_start = time.perf_counter()
        result = evaluate({run: info["dir"] for run, info in training.items()}, datalist, args.n, args.seed)
        result["training"] = training
        result["settings"] = {"minutes": args.minutes, "n": args.n, "seed": args.seed, "datalist": str(datalist),
                              "image_size": IMAGE_SIZE, "sequential": args.sequential, "overrides": args.set}
        result["seconds"] = {"evaluation": round(time.perf_counter() - eval_start, 1),
                             "total": round(time.perf_counter() - start, 1)}
        print_table(result, training)
        print(f"evaluation {result['seconds']['evaluation']} s, total {result['seconds']['total']} s")
        (args.out / "table.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out / 'table.json'}")
    except BusmonaiInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
