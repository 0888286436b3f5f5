"""``busmonai prepare``: a published dataset folder -> processed images, masks and a datalist.

Implements the data contract of docs/design.md: single-channel images resized to ``size`` x ``size``,
lesion masks merged (logical OR) and binarised, ``label`` / ``class`` / ``domain`` / ``bbox`` /
``source``, derived BI-RADS attributes and prompts (``busmonai.clinical``), and seeded
class-stratified splits. The same inputs and seed give byte-identical outputs. The output folder
is written atomically: on any error nothing is left behind. Over an earlier output (or a foreign
folder with ``overwrite``) only what prepare owns, ``images/``, ``masks/`` and ``datalist.json``,
is replaced, once the new set is complete; the folder's other files are kept.

Datalist items are checked where they are read (:func:`checked_item`): objects, the keys a caller
needs, and file paths that stay inside the datalist's folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from busmonai import __version__
from busmonai.clinical.attributes import AttributeRule, AttributeScores, attribute_scores
from busmonai.clinical.bbox import mask_bbox
from busmonai.clinical.classes import IMAGE_CLASSES, LESION_CLASSES
from busmonai.clinical.prompts import build_prompt
from busmonai.data.imageio import load_gray, load_mask, resize_gray, resize_mask, save_png, to_uint8
from busmonai.data.readers import DOMAINS, READERS
from busmonai.data.records import LABELS, RawCase
from busmonai.data.splits import parse_fractions, stratified_split
from busmonai.errors import BusmonaiInputError
from busmonai.files import atomic_directory, refuse_symlink, remove_stale_partials

DATALIST_NAME = "datalist.json"
PRODUCER = "busmonai prepare"
OWNED: tuple[str, ...] = ("images", "masks", DATALIST_NAME)
"""The entries of an output folder that prepare writes and replaces; any other file there is kept."""
PATH_KEYS: tuple[str, ...] = ("image", "mask")
"""Item keys that hold file paths relative to the datalist's folder."""


@dataclass
class _Processed:
    case: RawCase
    name: str
    scores: AttributeScores | None
    bbox: list[int] | None


def merged_mask(case: RawCase, shape: tuple[int, int]) -> np.ndarray:
    """Load, check, binarise and merge (logical OR) the mask files of ``case``.

    Args:
        case: the raw case.
        shape: (height, width) of its source image.

    Returns:
        A boolean (H, W) mask, all False for a case without mask files.

    Raises:
        BusmonaiInputError: a mask of another size than its image (unless the reader allows
            resizing), or an empty mask on a tumor image.
    """
    merged = np.zeros(shape, dtype=bool)
    for path in case.masks:
        mask = load_mask(path, case.mask_mode)
        if mask.shape != shape:
            if not case.resize_masks:
                raise BusmonaiInputError(
                    f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} px but its image {case.image.name} "
                    f"is {shape[1]}x{shape[0]} px; fix or remove the mask"
                )
            merged |= resize_mask(mask, shape)
        else:
            merged |= mask >= 0.5
    if case.cls in LESION_CLASSES and not merged.any():
        names = ", ".join(p.name for p in case.masks) or "(none)"
        raise BusmonaiInputError(
            f"{case.image}: {case.cls} image with an empty mask ({names}); draw the lesion or remove the image"
        )
    return merged


def _resize_case_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    resized = resize_mask(mask.astype(np.float32), size)
    if mask.any() and not resized.any():  # a tiny lesion vanished: keep every touched pixel
        resized = resize_mask(mask.astype(np.float32) * 1e6, size)
    return resized


def _check_paths(root: Path, out: Path, overwrite: bool = False) -> None:
    refuse_symlink(out)
    remove_stale_partials(out)  # a kill between the renames of a replacement: the old output comes back
    root_r, out_r = root.resolve(), out.resolve()
    if out_r == root_r or root_r in out_r.parents:
        raise BusmonaiInputError(
            f"--out {out} is inside the input folder {root}; write the prepared data elsewhere"
        )
    if out.exists():
        if not out.is_dir():
            raise BusmonaiInputError(f"--out {out} is a file; choose a folder")
        entries = sorted(p.name for p in out.iterdir())
        if entries and not overwrite and not is_prepared_folder(out):
            shown = ", ".join(entries[:3]) + (" ..." if len(entries) > 3 else "")
            raise BusmonaiInputError(
                f"--out {out} holds files that 'busmonai prepare' did not write ({shown}); choose an empty or new "
                "folder, or pass --overwrite to write images/, masks/ and datalist.json into it (other files are kept)"
            )


def is_prepared_folder(folder: Path) -> bool:
    """True if ``folder`` holds a datalist written by ``busmonai prepare`` (safe to replace)."""
    try:
        return json.loads((folder / DATALIST_NAME).read_text()).get("producer") == PRODUCER
    except (OSError, ValueError, AttributeError):
        return False


def prepare_dataset(
    dataset: str,
    root: Path | str,
    out: Path | str,
    size: int = 256,
    seed: int = 0,
    split: str | tuple[float, float, float] = (0.8, 0.0, 0.2),
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Read a published dataset and write ``out/images``, ``out/masks`` and ``out/datalist.json``.

    Args:
        dataset: a key of :data:`busmonai.data.readers.READERS` (``busi``, ``udiat``, ...).
        root: the dataset folder in its published layout.
        out: output folder; must not lie inside ``root`` nor be a symbolic link. In an earlier
            output of this command the entries of :data:`OWNED` are replaced (atomically, once
            the new ones are complete) and every other file is kept; any other non-empty folder
            is refused unless ``overwrite``.
        size: side of the square output images and masks.
        seed: seed of the stratified split.
        split: (train, validation, test) fractions, or ``"0.8,0.0,0.2"``.
        progress: show a progress bar.
        overwrite: also write into a non-empty folder that prepare did not make (its
            ``images/``, ``masks/`` and ``datalist.json`` are replaced, other files kept).

    Returns:
        The datalist that was written.

    Raises:
        BusmonaiInputError: unknown dataset, bad layout or files, bad size or split, or an
            output folder that is a link or holds other files (without ``overwrite``).
    """
    if dataset not in READERS:
        raise BusmonaiInputError(f"unknown dataset {dataset!r}; use one of {', '.join(READERS)}")
    if size < 16:
        raise BusmonaiInputError(f"--size {size}: images must be at least 16 px")
    fractions = parse_fractions(split)
    root, out = Path(root), Path(out)
    cases = READERS[dataset](root)
    if not cases:
        raise BusmonaiInputError(f"{root}: no images found in the {dataset} layout")
    _check_paths(root, out, overwrite)
    shape = (size, size)
    counters: dict[str, int] = {}
    processed: list[_Processed] = []
    with atomic_directory(out, replace=True, owned=OWNED) as tmp:
        for case in tqdm(cases, desc=f"prepare {dataset}", unit="img", disable=not progress):
            image = load_gray(case.image)
            mask = merged_mask(case, image.shape)
            image_r = to_uint8(resize_gray(image, shape))
            mask_r = _resize_case_mask(mask, shape)
            counters[case.cls] = counters.get(case.cls, 0) + 1
            name = f"{case.cls}_{counters[case.cls]:04d}.png"
            save_png(image_r, tmp / "images" / name)
            save_png(mask_r, tmp / "masks" / name)
            has_lesion = bool(mask_r.any())
            processed.append(
                _Processed(
                    case=case,
                    name=name,
                    scores=attribute_scores(image_r, mask_r) if has_lesion else None,
                    bbox=list(mask_bbox(mask_r)) if has_lesion else None,
                )
            )
        splits = stratified_split([p.case.cls for p in processed], fractions, seed)
        rule = _fit_rule(processed, splits)
        if rule is None:
            raise BusmonaiInputError(f"{root}: no image with a lesion mask; nothing to prepare")
        datalist: dict[str, Any] = {
            "name": DOMAINS[dataset],
            "producer": PRODUCER,
            "version": __version__,
            "size": [size, size],
            "seed": seed,
            "split": list(fractions),
            "root": root.name,
            "attribute_rule": rule.to_dict(),
            "counts": {},
            "training": [],
            "validation": [],
            "test": [],
        }
        for item, split_name in zip(processed, splits):
            datalist[split_name].append(_item(item, dataset, rule))
        datalist["counts"] = {
            split_name: _count(datalist[split_name]) for split_name in ("training", "validation", "test")
        }
        (tmp / DATALIST_NAME).write_text(json.dumps(datalist, indent=1) + "\n")
    return datalist


def _fit_rule(processed: list[_Processed], splits: list[str]) -> AttributeRule | None:
    """Fit the attribute thresholds on the training split, or on all items of an external test
    set (a split with no training tumor image, e.g. STU prepared with ``--split 0,0,1``)."""
    training = [p.scores for p, s in zip(processed, splits) if s == "training" and p.scores]
    if training:
        return AttributeRule.fit(training)
    every = [p.scores for p in processed if p.scores]
    return replace(AttributeRule.fit(every), fitted_on="all") if every else None


def _item(item: _Processed, dataset: str, rule: AttributeRule) -> dict[str, Any]:
    case = item.case
    entry: dict[str, Any] = {
        "image": f"images/{item.name}",
        "mask": f"masks/{item.name}",
        "label": LABELS[case.cls],
        "class": case.cls,
        "domain": DOMAINS[dataset],
        "echogenicity": None,
        "boundary": None,
        "attribute_source": None,
        "bbox": item.bbox,
        "prompt": None,
        "source": case.source,
    }
    if item.scores is not None:
        attributes = rule.classify(item.scores)
        published = {k: v for k, v in case.attributes.items() if k in attributes and v}
        attributes.update(published)
        entry.update(attributes)
        entry["attribute_source"] = "dataset" if published else "derived"
        entry["heterogeneity"] = item.scores.heterogeneity
        entry["edge_contrast"] = item.scores.edge_contrast
    if case.cls in IMAGE_CLASSES:
        entry["prompt"] = build_prompt(case.cls, entry["echogenicity"], entry["boundary"])
    return entry


def _count(items: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in items:
        counts[entry["class"]] = counts.get(entry["class"], 0) + 1
    return dict(sorted(counts.items()))


def load_datalist(path: Path | str) -> dict[str, Any]:
    """Read a datalist JSON, with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise BusmonaiInputError(f"{path}: datalist not found; run 'busmonai prepare' first or pass its path")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise BusmonaiInputError(f"{path}: not valid JSON ({err}); re-run 'busmonai prepare'") from err
    if not isinstance(data, dict) or "training" not in data:
        raise BusmonaiInputError(f"{path}: no 'training' list; this is not a busmonai datalist")
    return data


def item_place(index: int, split: str | None = None) -> str:
    """How errors name a datalist item: ``item 3 of the 'training' split`` (``item 3`` for a
    datalist that is a plain list); ``index`` counts from 0, as in ``data["training"][3]``."""
    return f"item {index} of the '{split}' split" if split else f"item {index}"


def checked_item(
    datalist: Path | str,
    place: str,
    item: Any,
    required: Sequence[str] = (),
    paths: Sequence[str] = (),
    allow_external: bool = False,
    fix: str = "fix the datalist or re-run the command that wrote it",
) -> dict[str, Any]:
    """A copy of one datalist item, checked, with its file paths made absolute.

    Args:
        datalist: the datalist file; relative paths are relative to its folder.
        place: the item's place for messages (:func:`item_place`).
        item: the item as read from the JSON file.
        required: keys that must be present and not null.
        paths: keys holding file paths (those present must be non-empty strings); resolved to
            absolute paths in the copy.
        allow_external: accept paths that lead outside the datalist's folder (absolute paths
            elsewhere, or ``..`` steps above it). Off, such a path is refused: a datalist names
            the files beside it, and a path that climbs out is a mistake or a hostile file.
        fix: the fix named when a required key is missing.

    Raises:
        BusmonaiInputError: the item is not a JSON object, a required key is missing or null, a
            path is not a string or leads outside; the message names the datalist, the item
            (``place``) and the key.
    """
    datalist = Path(datalist)
    if not isinstance(item, dict):
        raise BusmonaiInputError(
            f"{datalist}: {place} is a JSON {type(item).__name__} ({json.dumps(item)[:60]}), not an object with "
            "'image' / 'mask' paths; fix or remove it"
        )
    missing = [key for key in required if item.get(key) is None]
    if missing:
        named = f" ({item['image']})" if isinstance(item.get("image"), str) else ""
        raise BusmonaiInputError(
            f"{datalist}: {place}{named} has no {', '.join(repr(k) for k in missing)} (missing or null); {fix}"
        )
    entry = dict(item)
    folder = Path(os.path.abspath(datalist.parent))
    for key in paths:
        if key not in item:
            continue
        value = item[key]
        if not isinstance(value, str) or not value:
            raise BusmonaiInputError(
                f"{datalist}: {place}: {key!r} must be a file path (a non-empty string), found {json.dumps(value)}; "
                "fix the datalist"
            )
        target = Path(os.path.normpath(folder / value))  # lexical: a link the user made inside stays allowed
        if not allow_external and target != folder and folder not in target.parents:
            raise BusmonaiInputError(
                f"{datalist}: {place}: {key!r} {value!r} leads outside the datalist's folder {folder}; keep the "
                "files under that folder and write their paths relative to it"
            )
        entry[key] = str((datalist.parent / value).resolve())
    return entry


def datalist_or_prepare(datalist: Path | str | None, busi_root: Path | str | None, out: Path | str,
                        size: int = 64) -> Path:
    """The given datalist, or one prepared from a BUSI folder into ``out/prepared`` (for scripts
    that accept either).

    Raises:
        BusmonaiInputError: neither is given.
    """
    if datalist is not None:
        return Path(datalist).resolve()
    if busi_root is None:
        raise BusmonaiInputError("give the BUSI folder or --datalist")
    prepare_dataset("busi", busi_root, Path(out) / "prepared", size=size)
    return (Path(out) / "prepared" / DATALIST_NAME).resolve()
