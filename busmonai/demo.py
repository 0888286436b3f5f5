"""``busmonai demo``: the whole pipeline, end to end, in a time budget.

On the embedded phantom (``busmonai phantom``) or a real BUSI folder (``--data``) it prepares the
data at 64 px, trains every stage of the cpu profile's chain with a share of ``--minutes``
(:data:`STAGE_PLAN`: the autoencoder, the mask-input LDM, and the downstream segmenter and
classifier used as judges), generates a labeled synthetic set from ellipse masks,
evaluates it (KID / FID against the real test images, mask adherence with the segmenter, label
fidelity with the classifier, boundary curvature of masks) and writes a report folder:
``report.md``, ``report.json`` and PNG figures (``control_sheet.png``: masks, then the benign and
the malignant image generated from each).

The terminal shows a progress bar per training stage and one line per step; each stage's full log
is in its run folder (``runs/<stage>/train.log``). Each step is recorded with its status. A step
that fails is reported with its error and the steps that need it are marked skipped: the report
never shows a number it did not compute.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from busmonai.clinical.classes import TUMOR_CLASSES
from busmonai.errors import BusmonaiInputError

STAGE_PLAN: tuple[tuple[str, tuple[str, ...], float, dict[str, Any]], ...] = (
    ("autoencoder", ("train.json",), 0.15, {"batch_size": 16}),
    ("ldm", ("train.json", "mask_input.json"), 0.50, {"batch_size": 16}),
    ("segmentation", ("train.json",), 0.05, {}),
    ("classification", ("train.json",), 0.07, {}),
)
"""Each trained stage: the bundle, its config files (merged in order), its share of ``--minutes`` and
the demo's overrides.

The cpu profile's chain: the autoencoder, then the LDM with the mask as an input channel instead of
LDM + ControlNet, which at equal wall-clock adheres better (README, "Mask control"). With the
phantom's 40 training images both take batches of 16 (more updates in the budget). The rest of
the budget (23 %) covers data, synthesis and evaluation, which take about 5 % on an idle machine
and 15 % under a load of 4 (the segmenter also stops early, at its ``max_epochs``)."""
TRAINED = tuple(stage for stage, *_ in STAGE_PLAN)
IMAGE_SIZE = 64
DEMO_STEPS = 20
"""DDIM steps of the demo's synthesis (the bundles default to 50)."""
PHANTOM_IMAGES = 60
DEMO_MARKER = ".busmonai_demo"
"""The file that marks a folder as a demo's output (which a later demo may write into again)."""


class _Steps:
    """Runs named steps, timing them and recording ``ok`` / ``failed`` / ``skipped``."""

    def __init__(self, progress: bool) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.progress = progress

    def run(self, name: str, needs: tuple[str, ...], action: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        missing = [n for n in needs if self.records.get(n, {}).get("status") != "ok"]
        if missing:
            self.records[name] = {"status": "skipped", "reason": f"needs {', '.join(missing)}"}
            return None
        start = time.perf_counter()
        try:
            detail = action() or {}
        except Exception as err:  # noqa: BLE001 - any failure is reported, never hidden
            self.records[name] = {"status": "failed", "seconds": round(time.perf_counter() - start, 1),
                                  "error": f"{type(err).__name__}: {err}",
                                  "trace": traceback.format_exc(limit=3)}
            self._say(name, f"FAILED after {self.records[name]['seconds']:.0f} s: {self.records[name]['error']}")
            return None
        self.records[name] = {"status": "ok", "seconds": round(time.perf_counter() - start, 1), **detail}
        self._say(name, f"ok in {self.records[name]['seconds']:.0f} s")
        return detail

    def _say(self, name: str, text: str) -> None:
        if self.progress:
            print(f"[demo] {name}: {text}", flush=True)


def _train(stage: str, configs: tuple[str, ...], out: Path, datalist: Path, minutes: float,
           progress: bool = True, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    from busmonai.engines.handlers import StageProgress
    from busmonai.pipeline import train_stage

    folder = out / "runs" / stage
    bar = StageProgress(stage, minutes, enabled=progress)
    record = train_stage(stage, out / "runs", datalist, configs, minutes, settings, log_file=folder / "train.log",
                         trainer_handlers=(bar,) if minutes > 0 else ())
    return {"budget_minutes": round(minutes, 2), "iterations": record["iterations"],
            "iterations_per_second": bar.summary.get("iterations_per_second"),
            "validation": record["validation"], "loss": record["loss"], "log": str(folder / "train.log")}


def _generate(out: Path, datalist: Path, n: int) -> dict[str, Any]:
    from busmonai.bundles import bundle_config, run_config
    from busmonai.pipeline import CHECKPOINT_KEYS, product_path, synthesis_needs

    runs = out / "runs"
    target = out / "synthetic"
    if target.exists():
        shutil.rmtree(target)
    checkpoints = {CHECKPOINT_KEYS[need]: str(product_path(runs, need)) for need in synthesis_needs(mask_input=True)}
    run_config([bundle_config("controlnet", "inference.json")], log_file=runs / "synthesis.log",
               datalist=str(datalist), output_dir=str(target), n=n, steps=DEMO_STEPS, mask_source="ellipse",
               **checkpoints)
    data = json.loads((target / "datalist.json").read_text())
    return {"n": len(data["training"]), "counts": data["counts"]["training"], "steps": DEMO_STEPS,
            "guidance": data["settings"]["guidance"], "mask_guidance": data["settings"].get("mask_guidance"),
            "datalist": str(target / "datalist.json")}


def _network(stage: str, out: Path) -> Any:
    from busmonai.bundles import load_bundle_network
    from busmonai.metrics import sources
    from busmonai.pipeline import product_path

    network = load_bundle_network(product_path(out / "runs", stage), None, stage)  # self-describing
    return sources.probability_fn(network, "auto")


def _figures(out: Path, datalist: Path, synthetic: Path | None) -> dict[str, str]:
    from busmonai.visualize import line_chart, save_grid

    figures: dict[str, str] = {}
    real = json.loads(datalist.read_text())
    real_items = [i for i in real["test"] + real["training"] if i["class"] in TUMOR_CLASSES][:8]
    load = lambda root, rel: np.asarray(Image.open(root / rel).convert("L"))  # noqa: E731
    if synthetic is not None:
        fake = json.loads(synthetic.read_text())["training"][:8]
        tiles = [load(datalist.parent, i["image"]) for i in real_items] + [load(synthetic.parent, i["image"]) for i in fake]
        figures["real_vs_synthetic"] = str(save_grid(tiles, out / "real_vs_synthetic.png", ncols=8, fill=255))
        masks = [load(synthetic.parent, i["mask"]) for c in TUMOR_CLASSES
                 for i in [e for e in json.loads(synthetic.read_text())["training"] if e["class"] == c][:8]]
        if masks:
            figures["masks_per_class"] = str(save_grid(masks, out / "masks_per_class.png", ncols=8, fill=128))
        if (synthetic.parent / "sheet.png").is_file():
            shutil.copy(synthetic.parent / "sheet.png", out / "control_sheet.png")
            figures["control_sheet"] = str(out / "control_sheet.png")
    series = _loss_series(out / "runs")
    if series:
        figures["loss_curves"] = str(line_chart(series, out / "loss_curves.png", "training loss per stage", log_y=True))
    return figures


def _loss_series(runs: Path) -> dict[str, tuple[list[float], list[float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # it logs every event file it cannot extend
    series: dict[str, tuple[list[float], list[float]]] = {}
    for stage, *_ in STAGE_PLAN:
        folder = runs / stage
        if not folder.is_dir():
            continue
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags = [t for t in accumulator.Tags().get("scalars", []) if t in ("train_loss", "train_loss/loss")]
        if tags:
            events = accumulator.Scalars(tags[0])
            series[stage] = ([e.step for e in events], [e.value for e in events])
    return series


def check_folders(out: Path, data: Path | None, overwrite: bool = False) -> None:
    """Refuse folders the demo must not write into: ``--data`` that is not a folder, ``--out`` equal
    to, inside or above ``--data``, and a non-empty ``--out`` that no demo made (no
    :data:`DEMO_MARKER`) unless ``overwrite``.

    Raises:
        BusmonaiInputError: naming the folder and the fix.
    """
    if data is not None:
        if not data.is_dir():
            raise BusmonaiInputError(f"--data {data}: not a folder; give a BUSI folder (Dataset_BUSI_with_GT) "
                                     "or leave --data out for the embedded phantom")
        a, b = out.resolve(), data.resolve()
        if a == b or b in a.parents or a in b.parents:
            raise BusmonaiInputError(f"--out {out} and --data {data} overlap: the demo would write into its input; "
                                     "choose an --out outside the data folder")
    if out.is_dir() and any(out.iterdir()) and not (out / DEMO_MARKER).is_file() and not overwrite:
        raise BusmonaiInputError(f"--out {out}: a folder of other files, not an earlier demo's; choose a new or "
                                 "empty folder, or pass --overwrite to write the demo's files into it")


def run_demo(out: str | Path, data: str | Path | None = None, minutes: float = 10.0, seed: int = 0,
             progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run the pipeline and write ``out/report.md`` and ``out/report.json``; returns the report.

    Raises:
        BusmonaiInputError: a budget that is not a positive finite number, or the folders that
            :func:`check_folders` refuses.
    """
    from busmonai.data.phantom import write_phantom_dataset
    from busmonai.data.prepare import prepare_dataset

    if not (math.isfinite(minutes) and minutes > 0):
        raise BusmonaiInputError(f"--minutes {minutes}: give a positive time budget")
    out = Path(out)
    check_folders(out, Path(data) if data else None, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("a busmonai demo writes this folder\n")
    for stale in ("report.md", "report.json"):
        (out / stale).unlink(missing_ok=True)
    start = time.perf_counter()
    steps = _Steps(progress)
    raw = Path(data) if data else out / "phantom"
    datalist = out / "prepared" / "datalist.json"

    def prepare() -> dict[str, Any]:
        if data is None:
            write_phantom_dataset(raw, n=PHANTOM_IMAGES, seed=seed, progress=progress)
        prepared = prepare_dataset("busi", raw, out / "prepared", size=IMAGE_SIZE, seed=seed, progress=progress)
        return {"source": "phantom" if data is None else str(data), "counts": prepared["counts"]}

    steps.run("data", (), prepare)
    from busmonai.pipeline import STAGES, synthesis_needs

    for stage, configs, share, settings in STAGE_PLAN:
        steps.run(stage, ("data", *STAGES[stage].needs), lambda stage=stage, configs=configs, share=share, settings=settings: _train(
            stage, configs, out, datalist, share * minutes, progress, settings))
    training = json.loads(datalist.read_text())["training"] if datalist.is_file() else []
    n_generate = max(16, 2 * sum(1 for i in training if i["class"] in TUMOR_CLASSES) if minutes >= 5 else 16)
    steps.run("synthesis", synthesis_needs(mask_input=True), lambda: _generate(out, datalist, n_generate))
    synthetic = out / "synthetic" / "datalist.json"

    def fid() -> dict[str, Any]:
        from busmonai.metrics.fid import compute_fid_kid

        result = compute_fid_kid(datalist, out / "synthetic" / "images", size=IMAGE_SIZE, split="test",
                                 progress=progress)
        return {k: result[k] for k in ("kid", "kid_std", "fid", "n_real", "n_fake")}

    def adherence() -> dict[str, Any]:
        from busmonai.metrics.adherence import datalist_adherence

        result = datalist_adherence(synthetic, _network("segmentation", out), method="demo segmentation bundle")
        return {"dice_mean": result["mean"], "dice_std": result["std"], "n": result["n"], "method": result["method"]}

    def fidelity() -> dict[str, Any]:
        from busmonai.metrics.fidelity import datalist_fidelity

        result = datalist_fidelity(synthetic, _network("classification", out))
        return {"auc": result["auc"], "accuracy": result["accuracy"]}

    def curvature() -> dict[str, Any]:
        from busmonai.metrics.curvature_stats import mask_curvature_statistics

        return {"real": mask_curvature_statistics(datalist), "synthetic": mask_curvature_statistics(synthetic)}

    steps.run("fid_kid", ("synthesis",), fid)
    steps.run("adherence", ("synthesis", "segmentation"), adherence)
    steps.run("fidelity", ("synthesis", "classification"), fidelity)
    steps.run("curvature", ("synthesis",), curvature)
    generated = synthetic if steps.records.get("synthesis", {}).get("status") == "ok" else None
    steps.run("figures", ("data",), lambda: {"files": _figures(out, datalist, generated)})
    report = {"settings": {"minutes": minutes, "seed": seed, "data": str(data) if data else "phantom",
                           "image_size": IMAGE_SIZE, "ddim_steps": DEMO_STEPS},
              "seconds": round(time.perf_counter() - start, 1), "steps": steps.records}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "report.md").write_text(render_report(report))
    return report


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "—"


def render_report(report: dict[str, Any]) -> str:
    """Markdown of a demo report; only steps with status ``ok`` contribute numbers."""
    steps = report["steps"]
    ok = {k: v for k, v in steps.items() if v.get("status") == "ok"}
    lines = ["# busmonai demo report", "",
             f"Data: {report['settings']['data']}, {report['settings']['image_size']} px; budget "
             f"{report['settings']['minutes']} min; total {report['seconds']:.0f} s.", "",
             "## Steps", "", "| step | status | seconds | detail |", "|---|---|---|---|"]
    for name, record in steps.items():
        detail = record.get("error") or record.get("reason") or ""
        if name in TRAINED and record.get("status") == "ok":
            validation = ", ".join(f"{k} {_fmt(v)}" for k, v in (record.get("validation") or {}).items())
            rate = record.get("iterations_per_second")
            detail = "lossless space-to-depth view, nothing to train" if record.get("iterations") == 0 else (
                f"{record.get('iterations')} iterations in {record.get('budget_minutes')} min"
                + (f" ({rate:.2f} it/s)" if rate else "") + (f"; {validation}" if validation else ""))
        lines.append(f"| {name} | {record['status']} | {_fmt(record.get('seconds'), 1)} | {detail} |")
    lines += ["", "## Synthetic data quality", ""]
    if "synthesis" in ok:
        s = ok["synthesis"]
        lines.append(f"{s['n']} images ({', '.join(f'{k} {v}' for k, v in s['counts'].items())}), "
                     f"{s['steps']} DDIM steps, text guidance {s['guidance']}, mask guidance "
                     f"{s.get('mask_guidance') or s['guidance']}.")
        lines.append("")
    rows = []
    if "fid_kid" in ok:
        f = ok["fid_kid"]
        rows.append(f"| KID (primary) vs {f['n_real']} real test images | {_fmt(f['kid'], 4)} +- {_fmt(f['kid_std'], 4)} |")
        rows.append(f"| FID (biased high for small sets) | {_fmt(f['fid'], 2)} |")
    if "adherence" in ok:
        a = ok["adherence"]
        rows.append(f"| mask adherence (Dice, {a['method']}) | {_fmt(a['dice_mean'])} +- {_fmt(a['dice_std'])} |")
    if "fidelity" in ok:
        rows.append(f"| label fidelity (AUC of the real-data classifier) | {_fmt(ok['fidelity']['auc'])} |")
    if "curvature" in ok:
        for source in ("real", "synthetic"):
            stats = ok["curvature"][source]
            for cls in TUMOR_CLASSES:
                if cls in stats:
                    rows.append(f"| mask curvature, {source} {cls} | {_fmt(stats[cls]['mean'])} +- "
                                f"{_fmt(stats[cls]['std'])} (n {stats[cls]['n']}) |")
    lines += (["| metric | value |", "|---|---|", *rows] if rows else ["No quality metric was computed (see Steps)."])
    files = ok.get("figures", {}).get("files", {})
    if files:
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({Path(path).name})" for name, path in files.items()]
    lines += ["", "Numbers come only from steps marked ok; a failed or skipped step shows none.", ""]
    return "\n".join(lines)
