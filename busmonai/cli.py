"""The ``busmonai`` command line (DESIGN.md, "CLI contract").

Thin by design: each sub-command parses its arguments and calls the library. Bad input raises
:class:`busmonai.errors.BusmonaiInputError`, printed as ``error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from busmonai.errors import BusmonaiInputError


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
        args.dataset, args.root, args.out, size=args.size, seed=args.seed, split=args.split
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
    )
    print(f"wrote {summary['n']} {args.label} masks ({args.method}) -> {args.out} (sheet: {summary['sheet']})")


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
    p.add_argument("--size", type=int, default=256, help="side of the square output images (default 256)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--split", default="0.8,0.0,0.2", help="train,validation,test fractions (default 0.8,0.0,0.2)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("phantom", help="simulate a small BUSI-layout dataset of B-mode images")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.add_argument("--n", type=int, default=60, help="number of images (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--width", type=int, default=256)
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("masks", help="draw tumor masks without annotation")
    p.add_argument("--method", choices=("ellipse", "scmg"), default="ellipse")
    p.add_argument("--label", choices=("benign", "malignant"), required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder (new, empty, or an earlier masks folder)")
    p.add_argument("--size", type=int, default=256, help="mask side in px (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bbox", type=_bbox, default=None, help="bounding rectangle x0,y0,x1,y1 to respect")
    p.add_argument("--datalist", type=Path, default=None, help="fit sizes and aspects to this datalist's training masks")
    p.add_argument("--sigma", type=float, default=None, help="elastic irregularity (default: per class)")
    p.add_argument("--size-class", choices=("small", "medium", "large"), default=None)
    p.set_defaults(func=cmd_masks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``busmonai`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except BusmonaiInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no partial output was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
