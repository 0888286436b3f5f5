"""Mean boundary curvature of the real BUSI masks, per class.

Usage::

    python scripts/curvature_stats.py <BUSI folder> [--json OUT.json] [--size 64]

Prints and writes ``{"benign": {"mean", "std", "n"}, "malignant": {...}}`` using the measure of
:mod:`busmonai.clinical.curvature` (the one used by the SCMG curvature loss, Medical Image
Analysis 2025, and by the evaluation). A case's ``_mask.png`` and ``_mask_N.png`` files are
merged by logical OR; ``normal/`` is ignored. ``--size N`` first resizes each mask (nearest
neighbour) so its longer side is N pixels, to show that the measure does not depend on the
resolution. Exit code 2 with a message for a folder without ``benign/`` or ``malignant/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from busmonai.clinical.classes import TUMOR_CLASSES
from busmonai.clinical.curvature import curvature_statistics
from busmonai.data.imageio import load_gray
from busmonai.data.prepare import merged_mask
from busmonai.data.readers.busi import read_busi
from busmonai.data.records import RawCase
from busmonai.errors import BusmonaiInputError

CLASSES = TUMOR_CLASSES


def case_masks(cases: list[RawCase], size: int | None = None) -> Iterator[np.ndarray]:
    """Merged binary mask of each case (``busmonai.data.prepare.merged_mask``), optionally resized
    (nearest) so that its longer side is ``size`` pixels."""
    for case in tqdm(cases, desc=cases[0].cls if cases else "masks", unit="case"):
        shape = load_gray(case.image).shape
        mask = merged_mask(case, shape)
        if size is not None:
            scale = size / max(shape)
            image = Image.fromarray(mask.astype(np.uint8) * 255)
            image = image.resize((max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale))), Image.NEAREST)
            mask = np.asarray(image) > 127
        yield mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="BUSI folder holding benign/ and malignant/ (Dataset_BUSI_with_GT)")
    parser.add_argument("--json", type=Path, default=None, help="write the statistics to this JSON file")
    parser.add_argument("--size", type=int, default=None, help="resize masks (nearest) to this longer side first")
    args = parser.parse_args(argv)

    if args.size is not None and args.size < 8:
        print(f"error: --size {args.size} is too small; use at least 8", file=sys.stderr)
        return 2
    try:
        cases = read_busi(args.root)
        results = {
            cls: curvature_statistics(case_masks([c for c in cases if c.cls == cls], args.size)) for cls in CLASSES
        }
    except BusmonaiInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for cls, st in results.items():
        print(f"{cls:10s} kappa = {st['mean']:.4f} +- {st['std']:.4f}  (n = {st['n']})")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
