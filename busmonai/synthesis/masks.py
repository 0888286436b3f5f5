"""``busmonai masks``: tumor masks without annotation, written as a folder of binary PNGs.

The elastic-deformed ellipse of CP (MICCAI 2025) is built in (``busmonai.clinical.ellipse``);
SCMG (the journal paper's mask generator) comes from its bundle once trained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from busmonai.checkpoint_io import read_checkpoint
from busmonai.clinical.bbox import mask_bbox, validate_bbox
from busmonai.clinical.classes import TUMOR_CLASSES
from busmonai.clinical.ellipse import EllipseMaskPrior, generate_ellipse_mask
from busmonai.data.dataset import split_items
from busmonai.data.imageio import open_image, save_png
from busmonai.errors import BusmonaiInputError
from busmonai.files import atomic_directory
from busmonai.networks.scmg import SCMGGenerator, binarize_masks, generate_soft_masks, sample_bboxes, tumor_type_index
from busmonai.visualize import save_grid

MASKS_INDEX = "masks.json"
PRODUCER = "busmonai masks"
SHEET_NAME = "sheet.png"
DEFAULT_SCMG_CHECKPOINT = "runs/scmg/model.pt"


def fit_prior_from_datalist(path: Path | str) -> EllipseMaskPrior:
    """Fit the ellipse prior (sizes, aspects) to the training masks of a datalist."""
    path = Path(path)
    masks, labels = [], []
    for item in split_items(path, "training", TUMOR_CLASSES, required=("image", "mask")):
        mask = open_image(path.parent / item["mask"], fix="re-run 'busmonai prepare'")
        masks.append(np.asarray(mask.convert("L")) > 127)
        labels.append(item["class"])
    if not set(TUMOR_CLASSES) <= set(labels):
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


# ----------------------------------------------------------------------------------------------
# SCMG masks (the journal paper's mask generator, bundles/scmg)


def load_generator(path: str | Path, key: str = "scmg_ckpt", device: torch.device | str = "cpu") -> SCMGGenerator:
    """Load a trained generator from its ``model.pt`` (the architecture is read from the file).

    Raises:
        BusmonaiInputError: the file is missing (train ``bundles/scmg`` first) or is not an SCMG
            generator.
    """
    path = Path(path)
    if not path.is_file():
        raise BusmonaiInputError(
            f"{path}: SCMG checkpoint not found; train the mask generator first "
            f"(python -m monai.bundle run --config_file bundles/scmg/configs/train.json) or pass --checkpoint PATH"
        )
    state = read_checkpoint(path, key)
    try:
        generator = SCMGGenerator.from_state_dict(state)
    except (RuntimeError, BusmonaiInputError) as err:
        raise BusmonaiInputError(f"{path}: not an SCMG generator checkpoint ({err}); train bundles/scmg") from err
    return generator.to(device).eval()


def _rescale_bbox(bbox: Sequence[int], src: int, dst: int) -> tuple[int, int, int, int]:
    """A rectangle at ``src`` px as a non-empty rectangle at ``dst`` px (outward rounding)."""
    scale = dst / src
    x0, y0 = int(np.floor(bbox[0] * scale)), int(np.floor(bbox[1] * scale))
    x1 = min(dst, max(x0 + 1, int(np.ceil(bbox[2] * scale))))
    y1 = min(dst, max(y0 + 1, int(np.ceil(bbox[3] * scale))))
    return x0, y0, x1, y1


def draw_scmg_masks(checkpoint: str | Path, label: str, n: int, size: int, seed: int = 0,
                    bbox: Sequence[int] | None = None, clip_to_bbox: bool = True,
                    device: torch.device | str = "cpu") -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
    """``n`` binary masks of one tumor type from a trained generator (``busmonai masks --method scmg``).

    The generator works at its training size; ``bbox`` (given at ``size``) is mapped to it, the
    soft masks are resized (bilinear) to ``size``, thresholded at 0.5, optionally clipped to
    the rectangle, and reduced to their largest component. Without ``bbox`` each mask gets a
    random rectangle drawn from the training statistics stored in the checkpoint.

    Returns:
        ``(masks, requested)``: boolean ``size x size`` masks and the requested rectangles at
        ``size``.

    Raises:
        BusmonaiInputError: missing checkpoint, unknown label, bad rectangle.
    """
    k = tumor_type_index(label)
    if bbox is not None:
        bbox = validate_bbox(bbox, size, size)
    generator = load_generator(checkpoint, device=device)
    gsize = generator.image_size
    types = torch.full((n,), k, dtype=torch.long)
    noise = torch.Generator().manual_seed(int(seed))
    if bbox is None:
        sampled = sample_bboxes(generator.box_bank, types, gsize, noise).tolist()
        requested = [_rescale_bbox(b, gsize, size) for b in sampled]
    else:
        requested = [tuple(bbox)] * n  # type: ignore[list-item]
    small = torch.tensor([_rescale_bbox(b, size, gsize) for b in requested], dtype=torch.int64)
    soft = generate_soft_masks(generator, types, small, seed=seed, device=device)
    if size != gsize:
        soft = F.interpolate(soft, size=(size, size), mode="bilinear", align_corners=False)
    masks = binarize_masks(soft, torch.tensor(requested), clip_to_bbox=clip_to_bbox)
    return masks, [tuple(int(v) for v in b) for b in requested]  # type: ignore[misc]
