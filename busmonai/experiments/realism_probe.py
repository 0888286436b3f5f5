"""Where does the generator's realism go? One table of KID, adherence and label fidelity per setup.

Each row is one setup of the default generator, *an autoencoder, an LDM checkpoint and sampling
settings*, run the way ``busmonai generate`` runs (the ControlNet bundle's ``inference.json``) on
the same elliptic masks and seeds, so rows differ only in what the row names. Per row: KID of
the generated images against the real images of ``--split`` (InceptionV3 pool features,
:mod:`busmonai.metrics.fid`), adherence (Dice of a real-trained segmenter's lesion with the
conditioning mask, :mod:`busmonai.metrics.adherence`) and label fidelity (AUC of a real-trained
classifier on the intended benign / malignant labels, :mod:`busmonai.metrics.fidelity`).

Because two setups that share the LDM and the seeds sample the same latents, swapping only the
autoencoder isolates the decoder, and swapping only the LDM checkpoint isolates its training.
Choose on the elliptic masks against the real **training** images (the default); ``--split test``
is for reporting only.

Usage::

    python scripts/realism_probe.py --datalist busi64/datalist.json --segmenter seg_real/model.pt \\
        --classifier cls_real/model.pt --out runs/realism_probe \\
        --row default=c4/autoencoder/model.pt,c4_b64/ldm/model.pt \\
        --row text_guidance_1=c4/autoencoder/model.pt,c4_b64/ldm/model.pt,guidance=1,mask_guidance=3
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from busmonai.errors import BusmonaiInputError

SAMPLING_KEYS = {"guidance": float, "mask_guidance": float, "steps": int, "conditioning_scale": float}
"""Sampling settings a row may set, as ``inference.json`` keys, and their types."""


@dataclass(frozen=True)
class Setup:
    """One row: a name, the two checkpoints and the sampling settings that differ from the defaults."""

    name: str
    autoencoder: Path
    ldm: Path
    sampling: dict[str, Any] = field(default_factory=dict)


def parse_row(text: str) -> Setup:
    """``NAME=AUTOENCODER_PT,LDM_PT[,key=value...]`` -> :class:`Setup`.

    Raises:
        BusmonaiInputError: a malformed row, an unknown sampling key or a bad value.
    """
    name, sep, rest = text.partition("=")
    parts = [p.strip() for p in rest.split(",")] if sep else []
    if not name.strip() or len(parts) < 2 or not all(parts[:2]):
        raise BusmonaiInputError(f"--row {text!r}: expected NAME=AUTOENCODER_PT,LDM_PT[,key=value...]")
    sampling: dict[str, Any] = {}
    for part in parts[2:]:
        key, eq, value = part.partition("=")
        if not eq or key not in SAMPLING_KEYS:
            raise BusmonaiInputError(f"--row {text!r}: {part!r} is not key=value with a key of {', '.join(SAMPLING_KEYS)}")
        try:
            sampling[key] = SAMPLING_KEYS[key](value)
        except ValueError:
            raise BusmonaiInputError(f"--row {text!r}: {key} needs a number, got {value!r}") from None
    return Setup(name.strip(), Path(parts[0]), Path(parts[1]), sampling)


def expected_settings(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    """What the synthetic datalist of ``setup`` records (``settings`` of ``busmonai generate``):
    the row's sampling keys over ``inference.json``'s defaults, the run's size and seeds, and the
    checkpoints' digests."""
    from busmonai.bundles import bundle_config
    from busmonai.files import file_digest

    defaults = json.loads(bundle_config("controlnet", "inference.json").read_text())
    expected = {key: defaults[key] for key in SAMPLING_KEYS}
    expected.update(setup.sampling, n=args.n, seed=args.seed, image_size=args.image_size, mask_source="ellipse",
                    checkpoints={"autoencoder": file_digest(setup.autoencoder), "ldm": file_digest(setup.ldm)})
    return expected


def generate(setup: Setup, args: argparse.Namespace, out: Path) -> Path:
    """Run ``busmonai generate``'s bundle for ``setup`` into ``out``; returns its datalist. A
    complete set already in ``out`` is measured again, not regenerated, when it records the same
    settings and checkpoints.

    Raises:
        BusmonaiInputError: a checkpoint that does not exist, or a set in ``out`` made otherwise.
    """
    from busmonai.bundles import bundle_config, run_config

    for path in (setup.autoencoder, setup.ldm):
        if not path.is_file():
            raise BusmonaiInputError(f"row {setup.name!r}: {path} does not exist")
    expected = expected_settings(setup, args)
    datalist = out / "datalist.json"
    if datalist.is_file():
        recorded = json.loads(datalist.read_text()).get("settings", {})
        differ = [key for key, value in expected.items() if recorded.get(key) != value]
        if differ:
            raise BusmonaiInputError(f"{datalist} was generated with other {', '.join(differ)} than row {setup.name!r}; "
                                     "give the row another name or another --out")
        return datalist
    run_config([bundle_config("controlnet", "inference.json")], output_dir=str(out.resolve()), n=args.n,
               mask_source="ellipse", datalist=str(Path(args.datalist).resolve()), seed=args.seed,
               image_size=args.image_size, autoencoder_ckpt=str(setup.autoencoder.resolve()),
               ldm_ckpt=str(setup.ldm.resolve()), **setup.sampling)
    return datalist


def measure(datalist: Path, args: argparse.Namespace, segmenter: Any, classifier: Any) -> dict[str, Any]:
    """KID against the real split, adherence and label fidelity of one generated set."""
    from busmonai.metrics.adherence import datalist_adherence
    from busmonai.metrics.fid import compute_fid_kid
    from busmonai.metrics.fidelity import datalist_fidelity

    kid = compute_fid_kid(args.datalist, datalist, size=args.image_size, split=args.split, progress=False)
    adherence = datalist_adherence(datalist, segmenter)
    fidelity = datalist_fidelity(datalist, classifier)
    return {"kid": kid["kid"], "kid_std": kid["kid_std"], "fid": kid["fid"], "n_real": kid["n_real"],
            "adherence": adherence["mean"], "label_auc": fidelity["auc"], "n": fidelity["n"]}


def format_table(rows: Sequence[dict[str, Any]], split: str) -> str:
    """The rows as a markdown table."""
    lines = [f"| setup | autoencoder | LDM | sampling | KID vs real {split} | adherence | label AUC | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sampling = ", ".join(f"{k} {v}" for k, v in r["sampling"].items()) or "defaults"
        lines.append(f"| {r['name']} | {r['autoencoder']} | {r['ldm']} | {sampling} | {r['kid']:.4f} +- {r['kid_std']:.4f} "
                     f"| {r['adherence']:.3f} | {r['label_auc']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", required=True, help="prepared real datalist (elliptic-mask sizes, KID reference)")
    parser.add_argument("--segmenter", required=True, help="segmentation model.pt trained on real images")
    parser.add_argument("--classifier", required=True, help="classification model.pt trained on real images")
    parser.add_argument("--row", action="append", required=True, metavar="NAME=AE_PT,LDM_PT[,key=value...]",
                        help=f"one setup (repeatable); keys: {', '.join(SAMPLING_KEYS)}")
    parser.add_argument("--split", default="training", choices=("training", "validation", "test"),
                        help="real images KID compares with (training: choose; test: report only)")
    parser.add_argument("--n", type=int, default=208, help="images per row (classes balanced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", default="runs/realism_probe")
    parser.add_argument("--json", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Generate and measure every row, print the table; exit 2 for bad input."""
    from busmonai.errors import find_input_error

    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except Exception as error:  # noqa: BLE001 - bad input exits 2 with its message
        found = find_input_error(error)
        if found is None:
            raise
        print(f"error: {found}")
        return 2


def _main(args: argparse.Namespace) -> int:
    from busmonai.files import write_json_atomic
    from busmonai.metrics.sources import probability_fn
    from busmonai.networks.described import load_network

    setups = [parse_row(r) for r in args.row]
    names = [s.name for s in setups]
    if len(set(names)) != len(names):
        raise BusmonaiInputError(f"--row names must differ, got {names}")
    segmenter = probability_fn(load_network(args.segmenter, "segmenter", "segmentation").eval(), "softmax")
    classifier = probability_fn(load_network(args.classifier, "classifier", "classification").eval(), "auto")
    out = Path(args.out)
    rows = []
    for setup in setups:
        start = time.perf_counter()
        datalist = generate(setup, args, out / setup.name)
        rows.append({"name": setup.name, "autoencoder": str(setup.autoencoder), "ldm": str(setup.ldm),
                     "sampling": setup.sampling, **measure(datalist, args, segmenter, classifier),
                     "seconds": time.perf_counter() - start})
        print(f"{setup.name}: KID {rows[-1]['kid']:.4f}, adherence {rows[-1]['adherence']:.3f}, "
              f"label AUC {rows[-1]['label_auc']:.3f}", flush=True)
    table = format_table(rows, args.split)
    print(table)
    if args.json:
        write_json_atomic({"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                           "rows": rows, "table": table}, args.json)
    return 0
