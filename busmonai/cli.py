"""The ``busmonai`` command line (docs/design.md, "CLI contract").

Thin by design: each sub-command parses its arguments and calls the library. Bad input raises
:class:`busmonai.errors.BusmonaiInputError`, printed as ``error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from busmonai.clinical.classes import TUMOR_CLASSES
from busmonai.errors import BusmonaiInputError, find_error, find_input_error, os_error_message
from busmonai.files import write_json_atomic


def _bbox(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1 as integers, got {text!r}") from err
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected four integers x0,y0,x1,y1, got {text!r}")
    return values  # type: ignore[return-value]


def cmd_prepare(args: argparse.Namespace) -> None:
    """``busmonai prepare DATASET --root RAW --out OUT``."""
    from busmonai.data.prepare import prepare_dataset

    datalist = prepare_dataset(
        args.dataset, args.root, args.out, size=args.size, seed=args.seed, split=args.split,
        overwrite=args.overwrite,
    )
    counts = {s: sum(c.values()) for s, c in datalist["counts"].items()}
    per_class = {
        cls: sum(c.get(cls, 0) for c in datalist["counts"].values())
        for cls in sorted({k for c in datalist["counts"].values() for k in c})
    }
    print(
        f"prepared {sum(counts.values())} images ({', '.join(f'{k} {v}' for k, v in per_class.items())}; "
        f"splits {counts['training']}/{counts['validation']}/{counts['test']}) -> {Path(args.out) / 'datalist.json'}"
    )


def cmd_phantom(args: argparse.Namespace) -> None:
    """``busmonai phantom --out DIR``."""
    from busmonai.data.phantom import write_phantom_dataset

    counts = write_phantom_dataset(args.out, n=args.n, seed=args.seed, height=args.height, width=args.width)
    print(f"wrote {sum(counts.values())} phantom images ({', '.join(f'{k} {v}' for k, v in counts.items())}) -> {args.out}")


def cmd_masks(args: argparse.Namespace) -> None:
    """``busmonai masks --method ellipse|scmg --label benign|malignant --n N --out DIR``."""
    from busmonai.synthesis.masks import write_masks

    summary = write_masks(
        method=args.method,
        label=args.label,
        n=args.n,
        out=args.out,
        size=args.size,
        seed=args.seed,
        bbox=args.bbox,
        datalist=args.datalist,
        sigma=args.sigma,
        size_class=args.size_class,
        checkpoint=args.checkpoint,
    )
    print(f"wrote {summary['n']} {args.label} masks ({args.method}) -> {args.out} (sheet: {summary['sheet']})")


def _json_value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def bounded(kind: type, low: float, high: float, low_open: bool = False) -> Callable[[str], Any]:
    """An argparse ``type``: a finite ``kind`` (int or float) in ``[low, high]`` (``(low, high]``
    with ``low_open``); anything else exits with code 2 and says the range. The upper bounds keep
    memory and run time sane (``prepare --size 100000`` would need tens of GB)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
        if not ok:
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: use a finite value {'>' if low_open else '>='} {low:g} and <= {high:g}")
        return value

    parse.__name__ = kind.__name__
    return parse


SIZE = bounded(int, 8, 2048)
COUNT = bounded(int, 1, 1_000_000)


def cmd_generate(args: argparse.Namespace) -> None:
    """``busmonai generate --out DIR --n N ...``: runs the ControlNet bundle's inference config."""
    from busmonai.bundles import bundle_config, run_config

    def absolute(path: Path | None) -> str | None:
        return str(Path(path).resolve()) if path is not None else None

    overrides: dict[str, object] = {
        "output_dir": absolute(args.out), "n": args.n, "ratio": args.ratio, "ratio_of": absolute(args.ratio_of),
        "mask_source": args.mask_source, "mode": args.mode, "guidance": args.guidance,
        "mask_guidance": args.mask_guidance, "conditioning_scale": args.conditioning_scale, "steps": args.steps,
        "seed": args.seed, "batch_size": args.batch_size, "image_size": args.image_size,
        "background": absolute(args.background), "background_classes": args.background_classes,
        "blend_margin": args.blend_margin, "blend": args.blend, "filter_segmenter_ckpt": absolute(args.filter),
        "filter_classifier_ckpt": absolute(args.filter_classifier), "filter_min_dice": args.filter_min_dice,
        "filter_min_class_prob": args.filter_min_class_prob, "filter_pool": args.filter_pool,
    }
    for key in ("datalist", "autoencoder_ckpt", "ldm_ckpt", "controlnet_ckpt", "scmg_ckpt", "lora_adapter"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = absolute(value)
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise BusmonaiInputError(f"--set {item!r}: expected KEY=VALUE (VALUE as JSON), e.g. --set unet_channels=[32,64,128]")
        overrides[key] = _json_value(value)
    from busmonai.pipeline import CHECKPOINT_KEYS, product_path, synthesis_needs

    def default(stage: str) -> Path:
        return Path(str(overrides.get(CHECKPOINT_KEYS[stage]) or product_path(Path.cwd() / "runs", stage)))

    mask_input = False
    if default("ldm").is_file():
        from busmonai.networks.described import part_description

        mask_input = bool(part_description(default("ldm"), "ldm_ckpt", "ldm").get("mask_channels", 0))
    for stage in synthesis_needs(args.mode, args.mask_source, mask_input):
        key = CHECKPOINT_KEYS[stage]
        path = default(stage)
        if not path.is_file():
            raise BusmonaiInputError(f"{path}: checkpoint not found for --{key.replace('_', '-')}; "
                                     f"train bundles/{stage} first or give --{key.replace('_', '-')}")
        overrides[key] = str(path.resolve())
    if "datalist" not in overrides:
        overrides["datalist"] = str(Path("data/prepared/datalist.json").resolve())
    run_config([bundle_config("controlnet", "inference.json")], **overrides)
    datalist = json.loads((Path(args.out) / "datalist.json").read_text())
    counts = datalist.get("counts", {}).get("training", {})
    print(f"generated {sum(counts.values())} images ({', '.join(f'{k} {v}' for k, v in counts.items())}; "
          f"mode {args.mode}, masks {args.mask_source}) -> {Path(args.out) / 'datalist.json'}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """``busmonai evaluate fid|adherence|fidelity|curvature|masks ...``: print a table, write ``--json``."""
    from busmonai.bundles import load_bundle_network
    from busmonai.metrics import sources

    def network(path: Path, config: Path | None, key: str) -> Callable:
        return sources.probability_fn(load_bundle_network(path, config, key), args.activation)

    if args.metric == "fid":
        from busmonai.metrics.fid import compute_fid_kid

        result = compute_fid_kid(args.real, args.fake, size=args.size, split=args.split, subsets=args.kid_subsets,
                                 subset_size=args.kid_subset_size, cache=not args.no_cache)
        rows = [("FID", f"{result['fid']:.3f}"), ("KID", f"{result['kid']:.5f} +- {result['kid_std']:.5f}"),
                ("images", f"{result['n_real']} real, {result['n_fake']} fake")]
    elif args.metric == "adherence":
        from busmonai.metrics.adherence import datalist_adherence

        segmenter = network(args.segmenter, args.segmenter_config, "segmenter") if args.segmenter else None
        result = datalist_adherence(args.datalist, segmenter, args.split, method=str(args.segmenter or ""))
        rows = [("Dice", f"{result['mean']:.3f} +- {result['std']:.3f}"),
                ("images", f"{result['n']} (skipped {result['skipped_empty']} without a lesion)"),
                ("segmentation", result["method"])]
    elif args.metric == "fidelity":
        from busmonai.metrics.fidelity import datalist_fidelity

        result = datalist_fidelity(args.datalist, network(args.classifier, args.classifier_config, "classifier"),
                                   args.split)
        rows = [("AUC", f"{result['auc']:.3f}"), ("accuracy@0.5", f"{result['accuracy']:.3f}"),
                ("images", f"{result['n_benign']} benign, {result['n_malignant']} malignant")]
    elif args.metric == "masks":
        from busmonai.metrics.mask_realism import evaluate_mask_realism, realism_rows

        result = evaluate_mask_realism(args.real, args.generated, args.split, sheet=args.sheet, seed=args.seed)
        rows = realism_rows(result)
    else:
        from busmonai.metrics.curvature_stats import mask_curvature_statistics

        result = mask_curvature_statistics(args.masks, args.split)
        rows = [(f"kappa {k}", f"{v['mean']:.4f} +- {v['std']:.4f} (n = {v['n']})") for k, v in result.items()]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    if args.json is not None:
        if args.json.is_dir():
            raise BusmonaiInputError(f"--json {args.json} is a folder; give a file name such as {args.json / 'result.json'}")
        write_json_atomic(result, args.json)
        print(f"wrote {args.json}")


def cmd_export(args: argparse.Namespace) -> None:
    """``busmonai export STAGE --run RUN_DIR --out DIR``."""
    from busmonai.bundles import export_bundle

    result = export_bundle(args.stage, args.run, args.out, overwrite=args.overwrite)
    print(f"exported bundle {args.stage} ({len(result['files'])} files, "
          f"{', '.join(f for f in result['files'] if f.startswith('models/'))}) -> {result['bundle']}")


def cmd_demo(args: argparse.Namespace) -> None:
    """``busmonai demo [--data DIR] [--out DIR] [--minutes 10]``."""
    from busmonai.demo import run_demo

    report = run_demo(args.out, data=args.data, minutes=args.minutes, seed=args.seed, overwrite=args.overwrite)
    statuses = [record["status"] for record in report["steps"].values()]
    print(f"demo finished in {report['seconds']:.0f} s ({statuses.count('ok')} steps ok, "
          f"{statuses.count('failed')} failed, {statuses.count('skipped')} skipped): {Path(args.out) / 'report.md'}")
    failed = [name for name, record in report["steps"].items() if record["status"] == "failed"]
    if failed:
        raise StepsFailed(f"demo steps failed: {', '.join(failed)} (their errors are in {Path(args.out) / 'report.md'})")


class StepsFailed(Exception):
    """Some steps of a command failed; the report says which (exit code 1)."""


class Terminated(BaseException):
    """SIGTERM arrived during a command. Raised from the signal handler so that, as for Ctrl-C,
    every ``except BaseException`` cleanup runs (temporary folders and ``.partial`` files are
    removed) before the process exits with 143 (128 + SIGTERM)."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the duration of the block (main thread only:
    Python delivers signals there), then restore the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    from busmonai import __version__
    from busmonai.data.readers import READERS

    parser = argparse.ArgumentParser(prog="busmonai", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"busmonai {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="turn a published dataset folder into images, masks and a datalist")
    p.add_argument("dataset", help=f"one of: {', '.join(READERS)}")
    p.add_argument("--root", type=Path, required=True, help="the dataset folder, in its published layout")
    p.add_argument("--out", type=Path, required=True, help="output folder (not inside --root)")
    p.add_argument("--size", type=SIZE, default=256, help="side of the square output images (default 256)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--split", default="0.8,0.0,0.2", help="train,validation,test fractions (default 0.8,0.0,0.2)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out that prepare did not make: its images/, masks/ and "
                        "datalist.json are replaced, its other files kept")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("phantom", help="simulate a small BUSI-layout dataset of B-mode images")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.add_argument("--n", type=bounded(int, 1, 100_000), default=60, help="number of images (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=SIZE, default=192)
    p.add_argument("--width", type=SIZE, default=256)
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("masks", help="draw tumor masks without annotation")
    p.add_argument("--method", choices=("ellipse", "scmg"), default="ellipse")
    p.add_argument("--label", choices=TUMOR_CLASSES, required=True)
    p.add_argument("--n", type=COUNT, required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder (new, empty, or an earlier masks folder)")
    p.add_argument("--size", type=SIZE, default=256, help="mask side in px (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bbox", type=_bbox, default=None, help="bounding rectangle x0,y0,x1,y1 to respect")
    p.add_argument("--datalist", type=Path, default=None, help="fit sizes and aspects to this datalist's training masks")
    p.add_argument("--sigma", type=bounded(float, 0, 10), default=None, help="elastic irregularity (default: per class)")
    p.add_argument("--size-class", choices=("small", "medium", "large"), default=None)
    p.add_argument("--checkpoint", type=Path, default=Path("runs/scmg/model.pt"),
                   help="SCMG generator for --method scmg (default runs/scmg/model.pt, written by bundles/scmg)")
    p.set_defaults(func=cmd_masks)

    p = sub.add_parser("generate", help="synthesise a labeled dataset with the ControlNet + LDM")
    p.add_argument("--out", type=Path, required=True, help="output folder (new, or an unfinished run to resume)")
    p.add_argument("--n", type=bounded(int, 0, 1_000_000), default=0, help="number of images (classes balanced)")
    p.add_argument("--ratio-of", type=Path, default=None, help="real datalist: generate --ratio x its training set")
    p.add_argument("--ratio", type=bounded(float, 0, 1000), default=None, help="synthetic:real ratio with --ratio-of (e.g. 1.0)")
    p.add_argument("--mask-source", choices=("real", "ellipse", "scmg"), default="ellipse")
    p.add_argument("--mode", choices=("full", "text", "mask"), default="full",
                   help="full: text + mask; text: no ControlNet; mask: ControlNet without a prompt")
    p.add_argument("--guidance", type=bounded(float, 0, 100), default=3.0, help="text guidance weight")
    p.add_argument("--mask-guidance", type=bounded(float, 0, 100), default=None,
                   help="mask guidance weight against the bare UNet (default: --guidance; 1: guide the text only)")
    p.add_argument("--conditioning-scale", type=bounded(float, 0, 100), default=1.0, help="multiplier of the ControlNet residuals")
    p.add_argument("--steps", type=bounded(int, 1, 1000), default=50, help="DDIM steps (1-1000: the training schedule has 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=bounded(int, 1, 4096), default=16)
    p.add_argument("--image-size", type=SIZE, default=64)
    p.add_argument("--background", type=Path, default=None,
                   help="datalist whose real training images receive the new lesions: only a dilated region "
                        "around each mask is synthesised, the rest stays the real image")
    p.add_argument("--background-classes", choices=("normal", "tumor"), default="normal",
                   help="normal images (default), or tumor images whose lesion is erased and replaced")
    p.add_argument("--blend-margin", type=bounded(int, 0, 64), default=3,
                   help="px the synthesised region extends around the mask (default 3)")
    p.add_argument("--blend", choices=("latent", "pixel"), default="latent",
                   help="latent: the real latent put back after every denoising step (default); pixel: only the "
                        "final pixel composite (the seam comparison's baseline)")
    p.add_argument("--filter", type=Path, default=None, metavar="SEGMENTER_MODEL_PT",
                   help="keep only images whose lesion a segmenter trained on real images finds at the mask")
    p.add_argument("--filter-classifier", type=Path, default=None, metavar="CLASSIFIER_MODEL_PT",
                   help="also drop images whose class a classifier trained on real images contradicts")
    p.add_argument("--filter-min-dice", type=bounded(float, 0, 1), default=0.5,
                   help="lowest Dice of the segmented lesion with the mask that is kept (default 0.5)")
    p.add_argument("--filter-min-class-prob", type=bounded(float, 0, 1), default=0.2,
                   help="lowest classifier probability of the intended class that is kept (default 0.2)")
    p.add_argument("--filter-pool", type=bounded(float, 1, 100), default=4.0,
                   help="candidates planned per requested image (default 4)")
    p.add_argument("--datalist", type=Path, default=None, help="real datalist for real masks and attribute frequencies")
    p.add_argument("--autoencoder-ckpt", dest="autoencoder_ckpt", type=Path, default=None)
    p.add_argument("--ldm-ckpt", dest="ldm_ckpt", type=Path, default=None)
    p.add_argument("--controlnet-ckpt", dest="controlnet_ckpt", type=Path, default=None)
    p.add_argument("--scmg-ckpt", dest="scmg_ckpt", type=Path, default=None)
    p.add_argument("--lora", dest="lora_adapter", type=Path, default=None, help="LoRA adapter for the LDM UNet")
    p.add_argument("--set", action="append", metavar="KEY=JSON", help="override a bundle config key (network sizes)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="assemble a release bundle (configs, docs, models/model.pt, model.ts) from a run")
    p.add_argument("stage", choices=["autoencoder", "ldm", "controlnet", "lora", "scmg", "segmentation",
                                     "classification"])
    p.add_argument("--run", type=Path, required=True, help="the stage's training output_dir (runs/STAGE)")
    p.add_argument("--out", type=Path, required=True, help="the new bundle folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at --out")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the whole pipeline end to end with a report (phantom data by default)")
    p.add_argument("--data", type=Path, default=None, help="a BUSI folder instead of the embedded phantom")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="report folder (default runs/demo)")
    p.add_argument("--minutes", type=bounded(float, 0, 10_080, low_open=True), default=10.0,
                   help="time budget (default 10; at most a week)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out that an earlier demo did not make")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="FID/KID, mask adherence, label fidelity, curvature of generated images, mask realism")
    metrics = p.add_subparsers(dest="metric", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    common.add_argument("--split", choices=("training", "validation", "test"), default=None,
                        help="datalist split (default: all splits; a synthetic datalist from generate is read whole)")
    m = metrics.add_parser("fid", parents=[common], help="FID and KID on InceptionV3 features (offline)")
    m.add_argument("real", type=Path, help="folder of real images or a datalist .json")
    m.add_argument("fake", type=Path, help="folder of generated images or a datalist .json")
    m.add_argument("--size", type=SIZE, default=None, help="resize images to SIZE x SIZE first (e.g. 64)")
    m.add_argument("--kid-subsets", type=bounded(int, 1, 100_000), default=100)
    m.add_argument("--kid-subset-size", type=bounded(int, 2, 1_000_000), default=1000)
    m.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    m = metrics.add_parser("adherence", parents=[common], help="Dice of conditioning masks vs segmentations")
    m.add_argument("datalist", type=Path, help="synthetic datalist (items with image and mask)")
    m.add_argument("--segmenter", type=Path, default=None, help="TorchScript or state dict (default: fallback)")
    m.add_argument("--segmenter-config", type=Path, default=None, help="bundle config with network_def")
    m = metrics.add_parser("fidelity", parents=[common], help="AUC of a classifier on the intended labels")
    m.add_argument("datalist", type=Path, help="synthetic datalist (items with image and class or label)")
    m.add_argument("--classifier", type=Path, required=True, help="TorchScript (ckpt_export) or state dict")
    m.add_argument("--classifier-config", type=Path, default=None, help="bundle config with network_def")
    m = metrics.add_parser("curvature", parents=[common], help="boundary curvature of masks per class")
    m.add_argument("masks", type=Path, help="folder of masks or a datalist .json")
    m = metrics.add_parser("masks", parents=[common], help="realism of generated masks against real ones "
                           "(two-sample AUC, shape statistics, diversity); --split: real split (default training)")
    m.add_argument("real", type=Path, help="prepared datalist .json (its training masks are the real reference)")
    m.add_argument("generated", type=Path, help="the --out folder of 'busmonai masks' (or a folder of such folders)")
    m.add_argument("--sheet", type=Path, default=None,
                   help="PNG of real vs generated masks per class (default: GENERATED_realism.png beside GENERATED)")
    m.add_argument("--seed", type=int, default=0, help="seed of the two-sample classifier (default 0)")
    for m in (metrics.choices["adherence"], metrics.choices["fidelity"]):
        m.add_argument("--activation", choices=("auto", "sigmoid", "softmax", "none"), default="auto",
                       help="network output -> probability (auto: sigmoid for 1 channel, softmax for 2+)")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``busmonai`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        with _sigterm_raises():
            func(args)
    except BusmonaiInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished files are kept and unfinished ones were not written", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated; finished files are kept and unfinished ones were not written", file=sys.stderr)
        return 143
    except StepsFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full or read-only disk, a missing folder, a permission
        print(_os_error_message(err, args), file=sys.stderr)
        return 2
    except RuntimeError as err:  # MONAI wraps errors raised inside bundle configs
        cause, os_cause = find_input_error(err), find_error(err, OSError)
        if cause is None and os_cause is None:
            raise
        print(f"error: {cause}" if cause is not None else _os_error_message(os_cause, args), file=sys.stderr)
        return 2
    return 0


def _os_error_message(err: OSError, args: argparse.Namespace) -> str:
    """``error: PATH: reason; fix``, naming the command's output when the system names no file."""
    return f"error: {os_error_message(err, getattr(args, 'out', None) or getattr(args, 'json', None))}"


if __name__ == "__main__":
    sys.exit(main())
