"""Real:synthetic ratio sweep of the downstream bundles: do synthetic images help diagnosis models?

The papers' downstream tables (docs/method.md section 6): the journal paper (Breast Ultrasound Tumor
Generation via Mask Generator and Text-Guided Network, Medical Image Analysis 2025) adds
synthetic images at 25 / 50 / 100 / 200 % of the real training set, CP (Clinical Prior-Guided
Tumor Generation for Breast Ultrasound, MICCAI 2025) at real:synthetic 1:1 ... 1:8, and both
compare with real only and with ordinary augmentation; LT-GenAug reports the same kind of table
for long-tailed classes. For every ratio x network x seed this script trains one bundle
(``bundles/classification`` or ``bundles/segmentation``, in-process, time-budgeted), evaluates
the best checkpoint (``evaluate.json``) on the real test split (and external datalists), appends
one JSON line per finished cell to ``OUT/results.jsonl``, prints one table per metric (mean +- std
over seeds, best per row marked ``*``), says whether synthetic data beat ordinary augmentation,
and draws ``OUT/plot_<set>_<metric>.png`` (metric vs ratio, drawn with PIL).

Ratio tokens: ``0`` (real only), ``ordinary`` (real only + ordinary augmentation), a number R
(``0.25``, ``0.5``, ``1``, ``2``), a percentage (``25%``) or CP's ``1:k``, and ``R+ordinary``
(synthetic plus augmentation), and ``adaptive`` (classification: LT-GenAug's class-adaptive
sampler, ``bundles/classification/configs/adaptive_sampler.json``, drawing from the whole
synthetic datalist), and ``pretrain`` / ``pretrain+ordinary`` (the network trained on the synthetic
images alone with the cell's budget, ``pretrain_synthetic.json``, then fine-tuned on the real ones with
the same budget from those weights, ``init_ckpt``). Re-running with the same ``--out`` skips finished cells; a cell
that was interrupted is trained again from scratch, so every cell gets the same time budget.

Several synthesis sources in one sweep: ``--synthetic NAME=DATALIST`` (repeatable) names each source,
and a token ``NAME:TOKEN`` draws its synthetic images from that one (``filtered:1+ordinary``,
``background:0.5``, ``filtered:pretrain``); a token without a name uses the unnamed ``--synthetic``.
All arms share one ``results.jsonl``, so every table and paired difference compares them seed by seed.

Real BUSI sweep (64 px, one network per task, 5 seeds; the fixed-step protocol of docs/results.md,
"Do synthetic images help?": every arm the same optimizer steps and passes over the real images, a
cosine schedule and the last weights)::

    busmonai prepare busi --root ../shared/data/Dataset_BUSI_with_GT --out data/busi64 --size 64
    python scripts/downstream_sweep.py --task segmentation --datalist data/busi64/datalist.json \\
        --synthetic filtered=data/synthetic_filtered/datalist.json --synthetic background=data/synthetic_bg/datalist.json \\
        --ratios 0,ordinary,filtered:0.5,filtered:1,filtered:1+ordinary,background:1+ordinary \\
        --minutes 0 --max-epochs 40 --protocol added --schedule fixed --threads 1 --out runs/sweep_segmentation
    python scripts/downstream_sweep.py --task classification ... --max-epochs 15 ... --out runs/sweep_classification

With ``--minutes M`` instead (the default protocol ``mixed``, the checkpoint best on validation) each
cell trains for M minutes: the earlier, noisier protocol. Arms with R synthetic images per real one
cost about 1 + R times a real-only cell (EfficientNet-B0, 150 steps: 2-3 minutes; UNet, 800 steps:
1-2 minutes, one thread). Use ``--threads 1`` when other jobs share the CPU: oversubscribed OpenMP
threads slow small networks down by orders of magnitude.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from busmonai.bundles import bundle_config, run_config

PRIMARY = {"classification": ("auc", "f1", "f1_tuned"), "segmentation": ("dice",)}
"""Metrics tabled per task; ``f1_tuned``: F1 at the threshold that maximises it on the validation split."""
DEFAULT_NETWORK = {"classification": "efficientnet_b0", "segmentation": "unet"}
GOAL = {"auc": 0.02, "dice": 0.01}
ADAPTIVE = "adaptive"
PRETRAIN = "pretrain"
LABELS = {"0": "real only", "ordinary": "ordinary aug.", ADAPTIVE: "adaptive", PRETRAIN: "pretrain on syn.",
          f"{PRETRAIN}+ordinary": "pretrain + ord."}


SOURCE_SEPARATOR = ":"
"""Between a synthesis source's name and the ratio token (``filtered:1+ordinary``); CP's ``1:k`` has a digit before it."""


def uses_synthetic(token: str, ratio: float) -> bool:
    """True if the cell draws synthetic images (a ratio > 0, the adaptive sampler, pretraining)."""
    arm = split_source(token)[1]
    return ratio > 0 or arm == ADAPTIVE or arm.startswith(PRETRAIN)


def split_source(token: str) -> tuple[str | None, str]:
    """``(source name or None, the rest)`` of a ratio token: ``"filtered:1+ordinary"`` ->
    ``("filtered", "1+ordinary")``; ``"1:2"`` (CP's 1:k) and ``"2"`` -> ``(None, token)``."""
    name, separator, rest = token.strip().partition(SOURCE_SEPARATOR)
    if not separator or not name or name[0].isdigit() or name[0] == ".":
        return None, token.strip()
    return name, rest


def token_label(token: str) -> str:
    """The table heading of an arm: ``real only``, ``R=1``, ``filtered R=1+ordinary``, ..."""
    source, arm = split_source(token)
    label = LABELS.get(arm, f"R={arm}")
    return f"{source} {label}" if source else label


def parse_synthetic(values: Sequence[str]) -> dict[str | None, str]:
    """``{source name (None: unnamed): datalist}`` of the ``--synthetic`` options.

    Raises:
        BusmonaiInputError: a name given twice, or an empty name or path.
    """
    from busmonai.errors import BusmonaiInputError

    sources: dict[str | None, str] = {}
    for value in values:
        name, separator, path = value.partition("=")
        key: str | None = name.strip() if separator else None
        path = path if separator else value
        if separator and (not key or SOURCE_SEPARATOR in key or not path):
            raise BusmonaiInputError(f"--synthetic {value!r}: give NAME=DATALIST with a name without "
                                     f"{SOURCE_SEPARATOR!r}, or a bare DATALIST")
        if key in sources:
            raise BusmonaiInputError(f"--synthetic: the source {key or '(unnamed)'!r} is given twice")
        sources[key] = path
    return sources


def parse_token(token: str) -> tuple[str, float, str]:
    """``(canonical token, ratio, augment)`` of a ratio token (see the module docstring); a source
    name stays in front of the canonical token (``filtered:50%`` -> ``filtered:0.5``)."""
    from busmonai.data.mixing import parse_ratio
    from busmonai.errors import BusmonaiInputError

    source, text = split_source(token)
    if source is not None:
        arm, ratio, augment = parse_token(text)
        if arm in ("0", "ordinary"):
            raise BusmonaiInputError(f"ratio token {token!r}: {arm!r} uses no synthetic images; drop {source + ':'!r}")
        return f"{source}{SOURCE_SEPARATOR}{arm}", ratio, augment
    text = text.strip()
    augment = "none"
    if text == ADAPTIVE:
        return ADAPTIVE, 0.0, "none"
    if text == "ordinary":
        return "ordinary", 0.0, "ordinary"
    if text.endswith("+ordinary"):
        text, augment = text[: -len("+ordinary")], "ordinary"
    if text == PRETRAIN:  # pretrain on the synthetic images alone, then fine-tune on the real ones
        return PRETRAIN + ("+ordinary" if augment == "ordinary" else ""), 0.0, augment
    ratio = parse_ratio(text)
    if ratio == 0 and augment == "ordinary":
        return "ordinary", 0.0, "ordinary"
    if not text:
        raise BusmonaiInputError(f"ratio token {token!r}: give a ratio before '+ordinary'")
    canonical = f"{ratio:g}" + ("+ordinary" if augment == "ordinary" else "")
    return canonical, ratio, augment


def cell_key(task: str, network: str, token: str, seed: int) -> str:
    """The identity of one sweep cell in ``results.jsonl``."""
    return f"{task}|{network}|{token}|{seed}"


def load_results(path: Path) -> list[dict[str, Any]]:
    """Finished cells of ``results.jsonl`` (a torn last line from an interrupted write is ignored)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def train_configs(task: str, network: str, augment: str = "none", adaptive: bool = False,
                  added: bool = False, fixed_schedule: bool = False) -> list[Path]:
    """The bundle's config files of one arm, merged in order: ``train.json``; for segmentation the
    network's override file (``attention_unet.json``, ``resunet.json``, ``unetplusplus.json``; the
    UNet is ``train.json``'s own); ``ordinary_augmentation.json``; ``adaptive_sampler.json``, or
    ``added_synthetic.json`` (synthetic images added to each batch of real ones, so that every arm
    takes the same steps and passes over the real images); ``fixed_schedule.json`` (cosine decay
    over the step budget, the last checkpoint evaluated instead of the best on validation).

    Raises:
        BusmonaiInputError: a segmenter without an override file.
    """
    from busmonai.errors import BusmonaiInputError

    configs = [bundle_config(task, "train.json")]
    if task == "segmentation" and network != DEFAULT_NETWORK["segmentation"]:
        override = bundle_config(task, "train.json").with_name(f"{network}.json")
        if not override.is_file():
            known = sorted(p.stem for p in override.parent.glob("*.json")
                           if p.stem not in ("train", "evaluate", "inference", "metadata", "paper", "multi_gpu_train",
                                             "ordinary_augmentation", "fixed_schedule", "added_synthetic",
                                             "adaptive_sampler"))
            raise BusmonaiInputError(f"--networks {network}: no {override}; use unet or one of {', '.join(known)}")
        configs.append(override)
    if augment == "ordinary":
        configs.append(bundle_config(task, "ordinary_augmentation.json"))
    if adaptive:
        configs.append(bundle_config(task, "adaptive_sampler.json"))
    elif added:
        configs.append(bundle_config(task, "added_synthetic.json"))
    if fixed_schedule:
        configs.append(bundle_config(task, "fixed_schedule.json"))
    return configs


def run_cell(args: argparse.Namespace, network: str, token: str, ratio: float, augment: str, seed: int) -> dict:
    """Train and evaluate one cell; return its result row."""
    source, arm = split_source(token)
    cell_dir = Path(args.out).resolve() / args.task / network / f"r{token.replace(SOURCE_SEPARATOR, '_')}" / f"s{seed}"
    if cell_dir.exists():  # interrupted earlier: start over so every cell gets the same budget
        shutil.rmtree(cell_dir)
    common = {"image_size": args.image_size, "seed": seed, "output_dir": str(cell_dir), **args.overrides}
    if args.task == "classification":  # a timm model name; segmenters are override files (train_configs)
        common["network_name"] = network
    synthetic = args.sources.get(source) if uses_synthetic(token, ratio) else None
    train = {**common, "datalist": str(Path(args.datalist).resolve()), "ratio": ratio,
             "synthetic_datalist": str(Path(synthetic).resolve()) if synthetic else None,
             "max_minutes": args.minutes, "resume": False}
    if args.max_epochs:
        train["max_epochs"] = args.max_epochs
    elif args.minutes > 0:
        train["max_epochs"] = 100000
    start = time.perf_counter()
    added = args.protocol == "added" and ratio > 0
    configs = train_configs(args.task, network, augment, arm == ADAPTIVE, added, args.schedule == "fixed")
    if arm.startswith(PRETRAIN):  # the same budget on the synthetic images first, then on the real ones
        pretrain_dir = cell_dir / "pretrain"
        run_config([*configs, bundle_config(args.task, "pretrain_synthetic.json")],
                   **{**train, "output_dir": str(pretrain_dir)})
        train = {**train, "synthetic_datalist": None, "init_ckpt": str(pretrain_dir / "model.pt")}
    run_config(configs, **train)
    trained = json.loads((cell_dir / "metrics.json").read_text())
    evaluate = {**{k: v for k, v in common.items() if k in args.eval_keys or k in ("image_size", "network_name",
                                                                                       "seed", "output_dir")},
                "network_name": trained.get("network_name", network), "datalist": str(Path(args.datalist).resolve())}
    if args.task == "segmentation":
        evaluate["external_datalists"] = [str(Path(p).resolve()) for p in args.external]
    run_config([bundle_config(args.task, "evaluate.json")], **evaluate)
    tested = json.loads((cell_dir / "test_metrics.json").read_text())
    sets = {name: {k: v for k, v in entry.items() if k not in ("counts",)}
            for name, entry in tested.items() if isinstance(entry, dict) and "n" in entry}
    adaptive_path = cell_dir / "adaptive_sampler.json"
    adaptive = json.loads(adaptive_path.read_text())["history"] if adaptive_path.is_file() else []
    return {
        "cell": cell_key(args.task, network, token, seed), "task": args.task, "network": network, "ratio": token,
        "source": source, "synthetic_datalist": train["synthetic_datalist"] if synthetic else None,
        "ratio_value": ratio, "augment": augment, "seed": seed, "minutes": args.minutes, "image_size": args.image_size,
        "protocol": args.protocol, "schedule": args.schedule,
        "iterations": trained.get("iterations"), "epochs": trained.get("epochs"),
        "train_seconds": trained.get("seconds"), "seconds": round(time.perf_counter() - start, 1),
        "best_validation": trained.get("best_metric"), "training_counts": trained.get("training_counts"),
        "test": sets,
        **({"adaptive_final_counts": adaptive[-1]["counts"], "adaptive_steps": len(adaptive)} if adaptive else {}),
    }


def _stats(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarize(rows: Sequence[Mapping[str, Any]], tokens: Sequence[str], networks: Sequence[str],
              task: str) -> dict[tuple[str, str], dict[str, dict[str, tuple[float, float, int]]]]:
    """``{(set, metric): {network: {token: (mean, std, n_seeds)}}}`` over the finished rows."""
    table: dict[tuple[str, str], dict[str, dict[str, tuple[float, float, int]]]] = {}
    sets = sorted({name for row in rows for name in row["test"]}, key=lambda s: (s != "test", s))
    for name in sets:
        for metric in PRIMARY[task]:
            cells: dict[str, dict[str, tuple[float, float, int]]] = {}
            for network in networks:
                for token in tokens:
                    values = [row["test"][name][metric] for row in rows
                              if row["task"] == task and row["network"] == network and row["ratio"] == token
                              and name in row["test"] and row["test"][name].get(metric) is not None]
                    if values:
                        mean, std = _stats(values)
                        cells.setdefault(network, {})[token] = (mean, std, len(values))
            table[(name, metric)] = cells
    return table


def format_tables(table: Mapping[tuple[str, str], Mapping[str, Mapping[str, tuple[float, float, int]]]],
                  tokens: Sequence[str], networks: Sequence[str]) -> str:
    """The papers' tables: one per (set, metric), networks as rows, ratios as columns, mean +- std,
    the best mean of each row marked ``*``; then whether synthetic data beat the baselines."""
    lines: list[str] = []
    for (name, metric), cells in table.items():
        headers = [token_label(t) for t in tokens]
        width = max(16, *(len(h) + 2 for h in headers))
        lines.append(f"\n{metric.upper()} on '{name}' (mean +- std over seeds; * best per row)")
        lines.append(f"{'network':<16}" + "".join(f"{h:>{width}}" for h in headers))
        for network in networks:
            row = cells.get(network, {})
            best = max((v[0] for v in row.values()), default=None)
            text = f"{network:<16}"
            for token in tokens:
                if token in row:
                    mean, std, _ = row[token]
                    mark = "*" if best is not None and mean == best else " "
                    text += f"{f'{mean:.3f} +- {std:.3f}{mark}':>{width}}"
                else:
                    text += f"{'-':>{width}}"
            lines.append(text)
    return "\n".join(lines)


def seed_values(rows: Sequence[Mapping[str, Any]], task: str, network: str, token: str, name: str,
                metric: str) -> dict[int, float]:
    """``{seed: metric}`` of one arm on one evaluation set."""
    return {int(row["seed"]): float(row["test"][name][metric]) for row in rows
            if row["task"] == task and row["network"] == network and row["ratio"] == token
            and name in row["test"] and row["test"][name].get(metric) is not None}


def format_comparisons(rows: Sequence[Mapping[str, Any]], tokens: Sequence[str], networks: Sequence[str],
                       task: str) -> str:
    """Every arm against real only and against ordinary augmentation: the paired difference across
    seeds with its 95 % interval (:mod:`busmonai.experiments.statistics`); "beats" only when the
    interval lies above zero."""
    from busmonai.experiments.statistics import paired_difference

    lines: list[str] = []
    sets = sorted({name for row in rows for name in row["test"]}, key=lambda s: (s != "test", s))
    for name in sets:
        for metric in PRIMARY[task]:
            goal = GOAL.get(metric)
            lines.append(f"\n{metric.upper()} on '{name}': paired difference to the baseline (95 % interval)")
            for network in networks:
                for base in ("0", "ordinary"):
                    reference = seed_values(rows, task, network, base, name, metric)
                    if not reference:
                        continue
                    for token in tokens:
                        values = seed_values(rows, task, network, token, name, metric)
                        if token in (base, "0") or not values or not set(values) & set(reference):
                            continue
                        diff = paired_difference(values, reference)
                        lines.append(f"  {network}: {token_label(token)} vs {LABELS[base]}: "
                                     f"{diff.text(goal if base == 'ordinary' else None)}")
    return "\n".join(lines)


def format_markdown(rows: Sequence[Mapping[str, Any]], tokens: Sequence[str], networks: Sequence[str],
                    task: str) -> str:
    """The sweep as markdown tables, one per (set, metric, network): each arm's mean +- std over seeds,
    its training steps and minutes per cell, and its paired difference to real only and to ordinary
    augmentation with the 95 % interval ("beats" only when the interval lies above zero)."""
    from busmonai.experiments.statistics import paired_difference

    lines: list[str] = []
    sets = sorted({name for row in rows for name in row["test"]}, key=lambda s: (s != "test", s))
    for name in sets:
        for metric in PRIMARY[task]:
            for network in networks:
                base = {b: seed_values(rows, task, network, b, name, metric) for b in ("0", "ordinary")}
                lines += [f"\n**{metric.upper()} on '{name}', {network}**", "",
                          "| arm | seeds | mean +- std | steps | min / cell | vs real only | vs ordinary aug. |",
                          "|---|---|---|---|---|---|---|"]
                for token in tokens:
                    values = seed_values(rows, task, network, token, name, metric)
                    if not values:
                        continue
                    mean, std = _stats(list(values.values()))
                    cells = [r for r in rows if r["task"] == task and r["network"] == network and r["ratio"] == token]
                    steps = sorted({r.get("iterations") for r in cells if r.get("iterations") is not None})
                    minutes = sum(float(r.get("seconds") or 0) for r in cells) / max(1, len(cells)) / 60
                    versus = []
                    for b in ("0", "ordinary"):
                        shared = set(values) & set(base[b])
                        if token in (b, "0") or not shared:
                            versus.append("")
                            continue
                        diff = paired_difference(values, base[b])
                        versus.append(f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"
                                      + (" **beats**" if diff.beats else ""))
                    lines.append(f"| {token_label(token)} | {len(values)} | {mean:.3f} +- {std:.3f} | "
                                 f"{'/'.join(str(v) for v in steps)} | {minutes:.1f} | {versus[0]} | {versus[1]} |")
    return "\n".join(lines).lstrip("\n") + "\n"


def plot_series(tokens: Sequence[str]) -> dict[str, list[tuple[float, str]]]:
    """The lines of the ratio plot: ``{series: [(ratio, token), ...]}``, one series per synthesis source
    with and without ordinary augmentation, each starting at its baseline (real only, or ordinary
    augmentation, at ratio 0). Arms that are not ratios (``adaptive``, ``pretrain``) are left to the tables."""
    series: dict[str, list[tuple[float, str]]] = {}
    for token in tokens:
        source, arm = split_source(token)
        if arm in ("0", "ordinary") or arm == ADAPTIVE or arm.startswith(PRETRAIN):
            continue
        _, ratio, augment = parse_token(arm)
        name = (source or "synthetic") + (" + ordinary" if augment == "ordinary" else "")
        base = "ordinary" if augment == "ordinary" else "0"
        line = series.setdefault(name, [(0.0, base)] if base in tokens else [])
        line.append((ratio, token))
    return {name: sorted(points) for name, points in series.items()}


def draw_plot(cells: Mapping[str, tuple[float, float, int]], tokens: Sequence[str], title: str, path: Path) -> Path:
    """Metric vs synthetic : real ratio of one network, one line (with +- std bars) per synthesis
    source with and without ordinary augmentation (:func:`plot_series`), drawn with PIL (no matplotlib)."""
    from PIL import Image, ImageDraw

    series = {name: [(r, cells[t]) for r, t in points if t in cells] for name, points in plot_series(tokens).items()}
    series = {name: points for name, points in series.items() if any(r > 0 for r, _ in points)}  # not a lone baseline
    width, height, left, right, top, bottom = 720, 420, 70, 210, 40, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    values = [m + s * k for points in series.values() for _, (m, s, _) in points for k in (-1, 1)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max(0.02, 0.1 * (high - low))
    low, high = max(0.0, low - pad), min(1.0, high + pad) if high <= 1 else high + pad
    ratios = sorted({r for points in series.values() for r, _ in points}) or [0.0]
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(ratio: float, value: float) -> tuple[float, float]:  # ratios evenly spaced, in order
        x = left + plot_w * (ratios.index(ratio) + 0.5) / len(ratios)
        return x, top + plot_h * (1 - (value - low) / max(high - low, 1e-9))

    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    draw.text((left, 12), title, fill="black")
    for k in range(5):
        value = low + (high - low) * k / 4
        y = xy(ratios[0], value)[1]
        draw.line([left - 4, y, left, y], fill="black")
        draw.line([left, y, left + plot_w, y], fill=(225, 225, 225))
        draw.text((8, y - 6), f"{value:.3f}", fill="black")
    for ratio in ratios:
        text = f"{ratio:g}"
        draw.text((xy(ratio, low)[0] - 3 * len(text), top + plot_h + 8), text, fill="black")
    draw.text((left + plot_w // 2 - 60, height - 20), "synthetic : real ratio (0: the baseline)", fill="black")
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
    for n, (name, points) in enumerate(series.items()):
        colour = colours[n % len(colours)]
        offset = 4 * (n - (len(series) - 1) / 2)  # side by side, so that equal points stay visible
        shifted = [((xy(r, m)[0] + offset, xy(r, m)[1]), m, s) for r, (m, s, _) in points]
        for (x, y), mean, std in shifted:
            draw.line([x, xy(ratios[0], mean - std)[1], x, xy(ratios[0], mean + std)[1]], fill=colour, width=1)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        if len(shifted) > 1:
            draw.line([p for p, _, _ in shifted], fill=colour, width=2)
        draw.text((left + plot_w + 10, top + 16 * n), name, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("classification", "segmentation"), required=True)
    parser.add_argument("--datalist", required=True, help="real datalist (training / validation / test)")
    parser.add_argument("--synthetic", action="append", default=[], metavar="[NAME=]DATALIST",
                        help="synthetic datalist (needed for ratios > 0); repeat as NAME=DATALIST for several "
                             "sources, chosen per token as NAME:TOKEN")
    parser.add_argument("--ratios", default="0,ordinary,0.5,1,2", help="comma-separated ratio tokens")
    parser.add_argument("--networks", default=None, help="comma-separated network names")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 5: the paired intervals need them)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training minutes per model (0: max_epochs)")
    parser.add_argument("--max-epochs", type=int, default=0, help="epochs per model (0: as many as --minutes allow)")
    parser.add_argument("--protocol", choices=("mixed", "added"), default="mixed",
                        help="mixed: synthetic items join the training list (an epoch grows with the ratio); added: "
                             "each batch of real items gets R times as many synthetic ones, so with --max-epochs N "
                             "and --minutes 0 every arm takes the same steps and real passes")
    parser.add_argument("--schedule", choices=("best", "fixed"), default="best",
                        help="best: constant learning rate, the checkpoint best on validation; fixed: cosine decay over "
                             "--max-epochs (with --minutes 0) and the last checkpoint")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--external", action="append", default=[], help="external datalist (segmentation)")
    parser.add_argument("--out", default="runs/sweep", help="output folder (results.jsonl, cells, plots)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--markdown", default=None, metavar="FILE",
                        help="also write the tables (mean, std, steps, paired differences) as markdown to FILE")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: print the tables and draw the plots of the finished cells in --out")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra bundle override (JSON value), e.g. --set batch_size=16")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; return the exit code (2 for bad input)."""
    from busmonai.errors import BusmonaiInputError

    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except BusmonaiInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    import torch

    from busmonai.errors import BusmonaiInputError

    if args.threads:
        torch.set_num_threads(args.threads)
    args.overrides = _overrides(args.set)
    eval_keys = {"seg_channels", "num_res_units", "num_classes", "classes", "batch_size"}
    args.eval_keys = eval_keys & set(args.overrides)
    parsed = [parse_token(t) for t in args.ratios.split(",") if t.strip()]
    tokens = list(dict.fromkeys(p[0] for p in parsed))
    networks = [n.strip() for n in (args.networks or DEFAULT_NETWORK[args.task]).split(",") if n.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.external and args.task != "segmentation":
        raise BusmonaiInputError("--external datalists are evaluated by the segmentation sweep only")
    args.sources = parse_synthetic(args.synthetic)
    for token, ratio, _ in parsed:
        source = split_source(token)[0]
        if uses_synthetic(token, ratio) and source not in args.sources:
            if source is None:
                raise BusmonaiInputError(f"--ratios {token}: has ratios > 0 (or adaptive) but no --synthetic DATALIST "
                                         "was given")
            raise BusmonaiInputError(f"--ratios {token}: no --synthetic {source}=DATALIST was given (sources: "
                                     f"{', '.join(str(k) for k in args.sources) or 'none'})")
    if any(split_source(token)[1] == ADAPTIVE for token, _, _ in parsed) and args.task != "classification":
        raise BusmonaiInputError("--ratios adaptive: LT-GenAug's adaptive sampler is wired into the "
                                 "classification bundle only (its reward is the validation AUC)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = {row["cell"] for row in load_results(results_path)}
    todo = [(n, p, s) for n in networks for p in dict((p[0], p) for p in parsed).values() for s in seeds
            if cell_key(args.task, n, p[0], s) not in done]
    total = len(networks) * len(tokens) * len(seeds)
    print(f"{args.task} sweep: {total} cells, {total - len(todo)} already finished, {len(todo)} to run "
          f"(about {len(todo) * (args.minutes + 0.2):.0f} min)" if not args.report_only else
          f"{args.task} sweep: {total} cells, {total - len(todo)} finished, {len(todo)} not run (--report-only)", flush=True)
    if args.report_only:
        todo = []
    for k, (network, (token, ratio, augment), seed) in enumerate(todo, 1):
        print(f"[{k}/{len(todo)}] {network} ratio {token} seed {seed}", flush=True)
        row = run_cell(args, network, token, ratio, augment, seed)
        with open(results_path, "a") as stream:
            stream.write(json.dumps(row) + "\n")
        print(f"  -> {json.dumps(row['test'])}", flush=True)
    rows = [r for r in load_results(results_path) if r["task"] == args.task]
    table = summarize(rows, tokens, networks, args.task)
    print(format_tables(table, tokens, networks))
    print(format_comparisons(rows, tokens, networks, args.task))
    if args.markdown:
        from busmonai.files import write_text_atomic

        write_text_atomic(Path(args.markdown), format_markdown(rows, tokens, networks, args.task))
        print(f"markdown: {args.markdown}")
    for (name, metric), cells in table.items():
        for network, row in cells.items():
            suffix = "" if len(networks) == 1 else f"_{network}"
            plot = draw_plot(row, tokens, f"{args.task} ({network}): {metric} on '{name}' vs synthetic ratio",
                             out / f"plot_{name}_{metric}{suffix}.png")
            print(f"plot: {plot}")
    return 0
