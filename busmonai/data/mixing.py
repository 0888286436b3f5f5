"""Training sets of real and synthetic images for the downstream bundles (docs/method.md section 6).

The papers measure whether synthetic images help diagnosis models by adding them to the real
training set at a ratio R of its size:

- the journal paper (Breast Ultrasound Tumor Generation via Mask Generator and Text-Guided
  Network, Medical Image Analysis 2025) adds 25 %, 50 %, 100 % and 200 %;
- CP (Clinical Prior-Guided Tumor Generation for Breast Ultrasound, MICCAI 2025) writes the same
  as real:synthetic = 1:k (1:1, 1:2, 1:4, 1:8), i.e. R = k;
- both compare with real only (R = 0) and with "ordinary augmentation" (flip, rotation, affine,
  brightness), :func:`augmentation` here.

:func:`mix_datalists` is the rule: all real training items plus ``round(R * n_real(c))``
synthetic items of every class ``c`` (so the synthetic part has the class proportions of the real
training set), drawn without replacement from a seeded permutation of that class's synthetic
pool. The first items of one permutation are taken, so for one seed a smaller ratio's synthetic
items are a subset of a larger ratio's. A pool too small for its class is an error that gives the
numbers (``replace=True`` repeats the pool instead, which the papers do not do).
Validation and test items always come from real datalists (:func:`real_items`); every item
carries ``synthetic: bool`` so a test or a handler can check it.

LT-GenAug's class-adaptive sampler (reinforcement-learned per-class synthetic counts per
mini-batch) is :mod:`busmonai.data.adaptive_sampler`; :func:`adaptive_training_items` gives it
the real items and the whole synthetic pool.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Compose

from busmonai.clinical.classes import LESION_CLASSES, TUMOR_CLASSES
from busmonai.data.dataset import datalist_split
from busmonai.data.prepare import load_datalist
from busmonai.errors import BusmonaiInputError

SPLITS: tuple[str, ...] = ("training", "validation", "test")


def parse_ratio(value: str | float | int) -> float:
    """The synthetic:real ratio R from ``0.5``, ``"0.5"``, ``"50%"`` or CP's ``"1:k"`` (R = k).

    Examples:
        ``parse_ratio("1:2") == 2.0``, ``parse_ratio("25%") == 0.25``, ``parse_ratio(1) == 1.0``.

    Raises:
        BusmonaiInputError: not a number, a malformed ``a:b``, or a negative ratio.
    """
    text = str(value).strip()
    try:
        if ":" in text:
            real, synthetic = (float(part) for part in text.split(":"))
            if real <= 0:
                raise ValueError("the real part of a:b must be positive")
            ratio = synthetic / real
        elif text.endswith("%"):
            ratio = float(text[:-1]) / 100.0
        else:
            ratio = float(text)
    except ValueError as err:
        raise BusmonaiInputError(
            f"ratio {value!r}: use a number (0, 0.25, 0.5, 1, 2), a percentage ('25%') or CP's '1:k' ({err})"
        ) from err
    if not math.isfinite(ratio) or ratio < 0:
        raise BusmonaiInputError(f"ratio {value!r}: the synthetic:real ratio must be a finite number >= 0")
    return ratio


def class_counts(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Number of items per ``class`` (sorted by class name)."""
    counts: dict[str, int] = {}
    for item in items:
        counts[str(item.get("class"))] = counts.get(str(item.get("class")), 0) + 1
    return dict(sorted(counts.items()))


def mask_as_label(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Segmentation items in MONAI's (and MONAI Label's) form: ``label`` is the mask file.

    The class survives as ``class`` (and the benign / malignant integer as ``tumor_label``).
    """
    out = []
    for item in items:
        entry = {k: v for k, v in item.items() if k not in ("mask", "label")}
        entry["label"] = item["mask"]
        if "label" in item:
            entry["tumor_label"] = item["label"]
        out.append(entry)
    return out


def split_counts(items: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """``{"real": {class: n}, "synthetic": {class: n}}`` of a (mixed) item list."""
    return {
        "real": class_counts([i for i in items if not i.get("synthetic")]),
        "synthetic": class_counts([i for i in items if i.get("synthetic")]),
    }


def synthetic_counts(real: Sequence[Mapping[str, Any]], ratio: float, classes: Sequence[str]) -> dict[str, int]:
    """Synthetic items per class for ratio R: ``round(R * n_real(class))``, halves rounded up."""
    counts = class_counts(real)
    return {c: int(math.floor(ratio * counts.get(c, 0) + 0.5)) for c in classes}


def _check_labels(real: Sequence[Mapping[str, Any]], synthetic: Sequence[Mapping[str, Any]],
                  where: str = "synthetic datalist") -> None:
    """Every synthetic class exists among the real items, with the same ``label`` when both carry one."""
    real_labels: dict[str, set[Any]] = {}
    for item in real:
        real_labels.setdefault(str(item.get("class")), set()).add(item.get("label"))
    extra = sorted({str(i.get("class")) for i in synthetic} - set(real_labels))
    if extra:
        raise BusmonaiInputError(
            f"{where}: classes {extra} do not occur in the real training data ({sorted(real_labels)}); "
            "generate only classes the real datalist has, or add them to the real datalist"
        )
    for item in synthetic:
        cls, label = str(item.get("class")), item.get("label")
        if "label" in item and None not in real_labels[cls] and label not in real_labels[cls]:
            raise BusmonaiInputError(
                f"{where}: item {item.get('image')} has class {cls!r} with label {label!r} but the real "
                f"datalist labels {cls!r} as {sorted(real_labels[cls])}; fix the synthetic datalist's labels"
            )


def mix_datalists(
    real_items: Sequence[Mapping[str, Any]],
    synthetic_items: Sequence[Mapping[str, Any]] | None,
    ratio: float | str,
    seed: int = 0,
    classes: Sequence[str] = TUMOR_CLASSES,
    replace: bool = False,
) -> list[dict[str, Any]]:
    """All real training items plus a class-balanced, seeded draw of synthetic items.

    For each class ``c`` of ``classes``, ``round(R * n_real(c))`` synthetic items of class ``c``
    are drawn (CP MICCAI 2025 / journal protocol, see the module docstring): the first items of
    a permutation of the class's synthetic pool seeded by ``(seed, class index)``.

    Args:
        real_items: real training items, each with ``class`` (and usually ``image``, ``label``).
        synthetic_items: the synthetic pool (same schema), or None when ``ratio`` is 0.
        ratio: R as a number or a string for :func:`parse_ratio` (``"1:2"``).
        seed: seed of the draw.
        classes: classes to balance (items of other classes are dropped from both lists, after
            checking that every synthetic class and label occurs among the real items).
        replace: when a class's pool is smaller than its count, repeat the pool (whole copies,
            then the first items of the permutation) instead of raising.

    Returns:
        Real items (``synthetic: False``) followed by the drawn synthetic items (``synthetic: True``),
        each a new dict.

    Raises:
        BusmonaiInputError: negative or malformed ratio; ratio > 0 without synthetic items;
            synthetic classes or labels the real items lack; a pool too small (``replace=False``).
    """
    value = parse_ratio(ratio)
    real = [dict(item, synthetic=False) for item in real_items if item.get("class") in classes]
    if value == 0:
        return real
    if not synthetic_items:
        raise BusmonaiInputError(
            f"ratio {ratio} asks for synthetic images but no synthetic datalist was given; "
            "pass --synthetic_datalist PATH (a datalist written by 'busmonai generate') or --ratio 0"
        )
    _check_labels(real_items, synthetic_items)
    wanted = synthetic_counts(real, value, classes)
    mixed = list(real)
    for index, cls in enumerate(classes):
        pool = [item for item in synthetic_items if item.get("class") == cls]
        need = wanted[cls]
        if need == 0:
            continue
        if len(pool) < need and not (replace and pool):
            raise BusmonaiInputError(
                f"ratio {ratio}: {need} synthetic {cls} images are needed ({value:g} x {class_counts(real).get(cls, 0)} "
                f"real) but the synthetic datalist has {len(pool)}; generate at least {need} {cls} images "
                "(busmonai generate --ratio-of REAL_DATALIST --ratio R) or lower the ratio"
            )
        order = np.random.default_rng([int(seed), index]).permutation(len(pool)).tolist()
        chosen = (order * (need // len(pool) + 1))[:need]
        mixed.extend(dict(pool[k], synthetic=True) for k in chosen)
    return mixed


def _with_class(keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*keys, "class"]))


def real_items(
    datalist: str | Path,
    split: str,
    classes: Sequence[str] = TUMOR_CLASSES,
    image_size: int | None = None,
    holdout: float = 0.0,
    seed: int = 0,
    keys: Sequence[str] = ("image", "label"),
) -> list[dict[str, Any]]:
    """Items of one split of a real datalist (see :func:`busmonai.data.dataset.datalist_split`),
    each with ``class`` and ``synthetic: False``.

    Raises:
        BusmonaiInputError: the datalist is synthetic (validation and test must be real), or any
            error of ``datalist_split``.
    """
    data = load_datalist(datalist)
    if data.get("synthetic") or any(item.get("synthetic") for s in SPLITS for item in data.get(s) or []):
        raise BusmonaiInputError(
            f"{datalist}: a synthetic datalist was given as the real 'datalist'; validation and test "
            "must be real images: pass the prepared real datalist and give this one as --synthetic_datalist"
        )
    items = datalist_split(datalist, split, classes, image_size, holdout, seed, _with_class(keys))
    return [dict(item, synthetic=False) for item in items]


def synthetic_items(
    datalist: str | Path | None,
    classes: Sequence[str] = TUMOR_CLASSES,
    image_size: int | None = None,
    keys: Sequence[str] = ("image", "label"),
) -> list[dict[str, Any]]:
    """The synthetic pool: items of ``classes`` from every split of a synthetic datalist (synthetic
    images are never evaluated on, so the split does not matter), marked ``synthetic: True``.

    Raises:
        BusmonaiInputError: missing datalist, other image size, no item of ``classes``.
    """
    if not datalist:
        raise BusmonaiInputError("no synthetic datalist: pass --synthetic_datalist (the datalist 'busmonai generate' wrote)")
    data = load_datalist(datalist)
    pool: list[dict[str, Any]] = []
    for split in SPLITS:
        if any(item.get("class") in classes for item in data.get(split) or []):
            pool.extend(datalist_split(datalist, split, classes, image_size, keys=_with_class(keys)))
    if not pool:
        raise BusmonaiInputError(f"{datalist}: the synthetic datalist has no {'/'.join(classes)} items")
    return [dict(item, synthetic=True) for item in pool]


def training_items(
    datalist: str | Path,
    synthetic_datalist: str | Path | None,
    ratio: float | str,
    classes: Sequence[str] = TUMOR_CLASSES,
    image_size: int | None = None,
    holdout: float = 0.0,
    seed: int = 0,
    keys: Sequence[str] = ("image", "label"),
    replace: bool = False,
) -> list[dict[str, Any]]:
    """The bundles' training set: real training items (minus the validation holdout) mixed with
    a synthetic datalist at ``ratio`` (:func:`mix_datalists`).

    Besides the checks of :func:`mix_datalists`, the raw synthetic datalist may not contain
    classes or labels absent from the real one (even outside ``classes``), so a wrongly labelled
    synthetic set cannot slip through the class filter. A synthetic datalist is ignored at ratio 0.
    """
    value = parse_ratio(ratio)
    real = real_items(datalist, "training", classes, image_size, holdout, seed, keys)
    if value == 0:
        return real
    if not synthetic_datalist:
        return mix_datalists(real, None, ratio, seed, classes, replace)
    pool = _checked_synthetic_pool(datalist, synthetic_datalist, classes, image_size, keys)
    return mix_datalists(real, pool, value, seed, classes, replace)


def _checked_synthetic_pool(datalist: str | Path, synthetic_datalist: str | Path, classes: Sequence[str],
                            image_size: int | None, keys: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`synthetic_items` after checking that the raw synthetic datalist has no class or label
    the real one lacks."""
    raw_real = [i for s in SPLITS for i in load_datalist(datalist).get(s) or []]
    raw_synthetic = [i for s in SPLITS for i in load_datalist(synthetic_datalist).get(s) or []]
    _check_labels(raw_real, raw_synthetic, where=str(synthetic_datalist))
    return synthetic_items(synthetic_datalist, classes, image_size, keys)


def adaptive_training_items(
    datalist: str | Path,
    synthetic_datalist: str | Path | None,
    classes: Sequence[str] = TUMOR_CLASSES,
    image_size: int | None = None,
    holdout: float = 0.0,
    seed: int = 0,
    keys: Sequence[str] = ("image", "label"),
) -> list[dict[str, Any]]:
    """Training items for LT-GenAug's adaptive sampler: the real training items (minus the
    validation holdout) followed by the whole synthetic pool; the sampler
    (:class:`busmonai.data.adaptive_sampler.ClassAdaptiveBatchSampler`) decides how many
    synthetic items of each class enter a batch.

    Raises:
        BusmonaiInputError: no synthetic datalist, or the checks of :func:`training_items`.
    """
    if not synthetic_datalist:
        raise BusmonaiInputError(
            "the adaptive sampler draws synthetic images but no synthetic datalist was given; "
            "pass --synthetic_datalist PATH (a datalist written by 'busmonai generate')"
        )
    real = real_items(datalist, "training", classes, image_size, holdout, seed, keys)
    return real + _checked_synthetic_pool(datalist, synthetic_datalist, classes, image_size, keys)


def external_items(
    datalists: Sequence[str | Path] | None,
    classes: Sequence[str] = LESION_CLASSES,
    image_size: int | None = None,
    keys: Sequence[str] = ("image", "mask"),
    split: str = "test",
) -> dict[str, list[dict[str, Any]]]:
    """``{name: items}`` of the ``test`` split of each external datalist (e.g. STU prepared with
    ``--split 0,0,1``), named by the datalist's ``name`` (or its folder) and made unique.

    Raises:
        BusmonaiInputError: an external datalist of another image size or without test items,
            naming the ``external_datalists`` entry.
    """
    sets: dict[str, list[dict[str, Any]]] = {}
    for path in datalists or []:
        try:
            items = real_items(path, split, classes, image_size, keys=keys)
        except BusmonaiInputError as err:
            raise BusmonaiInputError(f"external_datalists entry {path}: {err}") from err
        name = str(load_datalist(path).get("name") or Path(path).parent.name)
        base, k = name, 2
        while name in sets or name == "test":
            name, k = f"{base}_{k}", k + 1
        sets[name] = items
    return sets


def no_augmentation(mode: str = "none") -> Compose:
    """The base ``train#augment`` of the downstream bundles: no transform.

    The papers' "ordinary augmentation" (horizontal flip, rotation up to 15 degrees, affine
    scaling +-10 % and translation +-8 %, brightness +-20 % and contrast (gamma 0.7-1.5), each
    with p 0.5, masks following the geometric transforms with nearest-neighbour interpolation) is
    the transform list of each bundle's ``configs/ordinary_augmentation.json``, which also sets
    ``augment`` to ``ordinary``; ``augment`` only names what ``train#augment`` holds.

    Raises:
        BusmonaiInputError: ``augment`` set to anything but ``none`` without the override file.
    """
    if mode != "none":
        raise BusmonaiInputError(
            f"augment {mode!r}: augmentation is an override file, not a key; merge the bundle's "
            "configs/ordinary_augmentation.json after train.json "
            "(--config_file \"['.../train.json','.../ordinary_augmentation.json']\")")
    return Compose([])
