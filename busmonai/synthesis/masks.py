"""``busmonai masks``: tumor masks without annotation, written as a folder of binary PNGs.

The elastic-deformed ellipse of CP (MICCAI 2025) is built in (``busmonai.clinical.ellipse``);
SCMG (the journal paper's mask generator) comes from its bundle once trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from busmonai.files import atomic_directory
from busmonai.clinical.bbox import mask_bbox, validate_bbox
from busmonai.clinical.ellipse import EllipseMaskPrior, generate_ellipse_mask
from busmonai.data.imageio import save_png
from busmonai.data.prepare import load_datalist
from busmonai.errors import BusmonaiInputError
from busmonai.visualize import save_grid

MASKS_INDEX = "masks.json"
PRODUCER = "busmonai masks"
SHEET_NAME = "sheet.png"
DEFAULT_SCMG_CHECKPOINT = "runs/scmg/model.pt"


def fit_prior_from_datalist(path: Path | str) -> EllipseMaskPrior:
    """Fit the ellipse prior (sizes, aspects) to the training masks of a datalist."""
    path = Path(path)
    datalist = load_datalist(path)
    masks, labels = [], []
    for item in datalist["training"]:
        if item.get("class") in ("benign", "malignant"):
            masks.append(np.asarray(Image.open(path.parent / item["mask"])) > 127)
            labels.append(item["class"])
    if not {"benign", "malignant"} <= set(labels):
        raise BusmonaiInputError(f"{path}: the training split needs benign and malignant masks to fit the prior")
    return EllipseMaskPrior.fit(masks, labels)


def _check_out(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise BusmonaiInputError(f"--out {out} is a file; choose a folder")
    if not any(out.iterdir()):
        return
    try:
        producer = json.loads((out / MASKS_INDEX).read_text()).get("producer")
    except (OSError, ValueError, AttributeError):
        producer = None
    if producer != PRODUCER:
        raise BusmonaiInputError(f"--out {out} holds files that 'busmonai masks' did not write; choose an empty or new folder")


def write_masks(
    method: str,
    label: str,
    n: int,
    out: Path | str,
    size: int = 256,
    seed: int = 0,
    bbox: tuple[int, int, int, int] | None = None,
    datalist: Path | str | None = None,
    sigma: float | None = None,
    size_class: str | None = None,
    progress: bool = True,
    checkpoint: Path | str = DEFAULT_SCMG_CHECKPOINT,
    clip_to_bbox: bool = True,
    device: str | Any = "cpu",
) -> dict[str, Any]:
    """Draw ``n`` masks of one tumor class and write them with an index and a PNG sheet.

    Writes ``out/<label>_0001.png ...`` (uint8 0/255, ``size`` x ``size``), ``out/masks.json``
    (method, seed, prior, and per mask its file and bbox) and ``out/sheet.png``.

    ``method="scmg"`` draws from the trained SCMG generator in ``checkpoint`` (default
    ``runs/scmg/model.pt``): soft masks thresholded at 0.5, clipped to the rectangle (unless
    ``clip_to_bbox`` is False) and reduced to their largest component; without ``bbox`` each
    mask gets a random rectangle drawn from the training statistics stored in the checkpoint.
    ``datalist``, ``sigma`` and ``size_class`` apply to the ellipse method only.

    Raises:
        BusmonaiInputError: n < 1, a bad rectangle, an unknown method or label, a missing SCMG
            checkpoint, or an output folder holding other files.
    """
    out = Path(out)
    if n < 1:
        raise BusmonaiInputError(f"--n {n}: draw at least one mask")
    if bbox is not None:
        validate_bbox(bbox, size, size)
    if method not in ("ellipse", "scmg"):
        raise BusmonaiInputError(f"unknown --method {method!r}; use ellipse or scmg")
    _check_out(out)
    scmg_masks: list[np.ndarray] = []
    requested: list[tuple[int, int, int, int]] = []
    if method == "scmg":
        from busmonai.engines.scmg import draw_scmg_masks

        scmg_masks, requested = draw_scmg_masks(checkpoint, label, n, size, seed, bbox, clip_to_bbox, device)
        prior = None
    else:
        prior = fit_prior_from_datalist(datalist) if datalist else EllipseMaskPrior.default()
    rng = np.random.default_rng(seed)
    entries: list[dict[str, Any]] = []
    masks: list[np.ndarray] = []
    with atomic_directory(out, replace=True) as tmp:
        for index in tqdm(range(n), desc=f"masks {label}", unit="mask", disable=not progress):
            if method == "scmg":
                mask = (scmg_masks[index] * 255).astype(np.uint8)
            else:
                mask = generate_ellipse_mask(
                    label, size, rng, prior=prior, size_class=size_class, sigma=sigma, bbox=bbox
                )
            name = f"{label}_{index + 1:04d}.png"
            save_png(mask, tmp / name)
            masks.append(mask)
            entries.append({"mask": name, "class": label, "bbox": list(mask_bbox(mask))})
            if requested:
                entries[-1]["requested_bbox"] = list(requested[index])
        save_grid(masks, tmp / SHEET_NAME, fill=96)
        index_data = {
            "producer": PRODUCER,
            "method": method,
            "label": label,
            "size": [size, size],
            "seed": seed,
            "bbox": list(bbox) if bbox else None,
            "sigma": sigma,
            "size_class": size_class,
            "prior": prior.to_dict() if prior is not None else None,
            "checkpoint": str(checkpoint) if method == "scmg" else None,
            "masks": entries,
        }
        (tmp / MASKS_INDEX).write_text(json.dumps(index_data, indent=1) + "\n")
    return {"n": n, "sheet": str(out / SHEET_NAME), "index": index_data}
