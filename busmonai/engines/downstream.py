"""Training, evaluation and inference helpers of the classification and segmentation bundles.

The papers judge synthetic images by what they do for diagnosis models (docs/method.md section 6):
AUC and F1 of benign-vs-malignant classifiers, Dice of tumor segmenters on the internal test set
and on an external one (STU) — the journal paper (Medical Image Analysis 2025), CP (MICCAI 2025)
and LT-GenAug report these. The bundles declare their metrics, post-transforms and augmentation
in JSON (``train.json``: ``validate#key_metric``, ``validate#postprocessing``; ``evaluate.json``
the same for the test sets); this module holds what configs cannot say: running an evaluator per
named set (:func:`evaluate_sets`), refusing synthetic items in validation and test sets (always
real), the preview rows and the inference items.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import StatsHandler
from torch import nn

from busmonai.clinical.classes import IMAGE_CLASSES
from busmonai.data.dataset import LoadPNGd
from busmonai.data.mixing import class_counts
from busmonai.errors import BusmonaiInputError
from busmonai.files import write_json_atomic

__all__ = [
    "assert_real", "classification_preview_rows", "evaluate_sets", "format_results", "inference_items",
    "segmentation_preview_rows",
]


def assert_real(items: Sequence[Mapping[str, Any]], what: str) -> None:
    """Raise if any item is synthetic: validation and test sets must be real."""
    synthetic = [i.get("image") for i in items if i.get("synthetic")]
    if synthetic:
        raise BusmonaiInputError(
            f"{what}: {len(synthetic)} synthetic images (e.g. {synthetic[0]}); evaluate on real datalists only"
        )


def _loader(items: Sequence[Mapping[str, Any]], keys: Sequence[str], image_size: int | None, batch_size: int,
            num_workers: int) -> DataLoader:
    """Batches of ``items`` with the PNG files of ``keys`` loaded (no augmentation); ``label``
    files are masks."""
    dataset = Dataset(list(items), transform=LoadPNGd(keys, image_size=image_size, binary_keys=("label",)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def fixed_schedule_iterations(max_epochs: int, epoch_length: int, max_minutes: float) -> int:
    """Length of ``fixed_schedule.json``'s cosine learning-rate schedule: every optimizer step of a
    run with a step budget (``max_epochs`` x iterations per epoch), so that every arm of a sweep
    decays alike and the last checkpoint is the model.

    Raises:
        BusmonaiInputError: a time budget (``max_minutes`` > 0), which would cut the schedule anywhere.
    """
    if max_minutes and float(max_minutes) > 0:
        raise BusmonaiInputError(
            f"fixed_schedule.json decays the learning rate over max_epochs ({max_epochs}) and keeps the last checkpoint: "
            f"it needs a step budget, not a time budget (max_minutes {max_minutes}); pass --max_minutes 0"
        )
    if max_epochs < 1 or epoch_length < 1:
        raise BusmonaiInputError(f"fixed_schedule.json needs max_epochs >= 1 and a non-empty training set "
                                 f"(max_epochs {max_epochs}, {epoch_length} iterations per epoch)")
    return int(max_epochs) * int(epoch_length)


def evaluate_sets(
    network: nn.Module,
    sets: Mapping[str, Sequence[Mapping[str, Any]]],
    load_keys: Sequence[str],
    postprocessing: Callable[..., Any],
    key_metric: Mapping[str, Callable[[], Any]],
    additional_metrics: Mapping[str, Callable[[], Any]] | None = None,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
    batch_size: int = 16,
    path: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Evaluate ``network`` on each named real item list with a MONAI ``SupervisedEvaluator``.

    The bundle's ``evaluate.json`` declares what an evaluation is: the item keys to load, the
    ``postprocessing`` transforms and the metric handlers (as ``"_mode_": "callable"`` components,
    so each set gets fresh ones).

    Args:
        network: the trained network (eval mode is set by the evaluator).
        sets: ``{name: items}``, e.g. ``{"test": ..., "STU": ...}``.
        load_keys: item keys holding files to load (``image``; and ``label`` for a mask).
        postprocessing: the evaluator's per-item post-transforms.
        key_metric: ``{name: factory}`` of the key metric handler.
        additional_metrics: ``{name: factory}`` of further metric handlers.
        device: where to run.
        image_size: expected image side (checked per file).
        batch_size: evaluation batch size.
        path: JSON file to write the results to, or None.
        extra: constant entries added to the JSON (checkpoint, network name, ...).
        num_workers: data-loader workers.

    Returns:
        ``{name: {"auc": ..., ..., "n": N, "counts": {class: n}}, **extra}``; NaN metrics (e.g.
        AUC of a one-class set) become None.

    Raises:
        BusmonaiInputError: synthetic items in a set, or an empty set.
    """
    results: dict[str, Any] = dict(extra or {})
    for name, items in sets.items():
        if not items:
            raise BusmonaiInputError(f"evaluation set {name!r} is empty")
        assert_real(items, f"evaluation set {name!r}")
        evaluator = SupervisedEvaluator(
            device=torch.device(device), val_data_loader=_loader(items, load_keys, image_size, batch_size, num_workers),
            network=network, postprocessing=postprocessing,
            key_val_metric={k: make() for k, make in key_metric.items()},
            additional_metrics={k: make() for k, make in (additional_metrics or {}).items()},
            val_handlers=[StatsHandler(iteration_log=False, name=f"evaluate_{name}")],
        )
        evaluator.run()
        results[name] = {k: _finite(v) for k, v in evaluator.state.metrics.items()}
        results[name].update(n=len(items), counts=class_counts(items))
    if path is not None:
        write_json_atomic(results, path)
    return results


@torch.no_grad()
def f1_threshold(network: nn.Module, items: Sequence[Mapping[str, Any]], load_keys: Sequence[str],
                 device: torch.device | str = "cpu", image_size: int | None = None, batch_size: int = 32,
                 positive: int = 1) -> float:
    """The probability threshold of class ``positive`` that maximises F1 on ``items`` (the
    validation split: the test split then reports F1 at a threshold it did not choose).

    Every distinct predicted probability is a candidate; among equal F1 the lowest threshold wins.
    Argmax of two classes is the threshold 0.5.

    Raises:
        BusmonaiInputError: no item, or no item of class ``positive`` (F1 is undefined).
    """
    if not items:
        raise BusmonaiInputError("no validation items to tune the F1 threshold on")
    assert_real(items, "the F1 threshold's validation set")
    network = network.to(device).eval()
    probabilities, labels = [], []
    for batch in _loader(items, load_keys, image_size, batch_size, 0):
        logits = network(batch["image"].to(device))
        probabilities.append(torch.softmax(logits.float(), dim=1)[:, positive].cpu())
        labels.append(torch.as_tensor(batch["label"]).reshape(-1).cpu())
    prob, label = torch.cat(probabilities), torch.cat(labels) == positive
    if not bool(label.any()):
        raise BusmonaiInputError(f"the validation items hold no class {positive}: F1 cannot choose a threshold")
    best, best_f1 = 0.5, -1.0
    for candidate in sorted(set(prob.tolist())):
        predicted = prob >= candidate
        tp = float((predicted & label).sum())
        f1 = 2 * tp / (float(predicted.sum()) + float(label.sum()))
        if f1 > best_f1:
            best, best_f1 = float(candidate), f1
    return best


def format_results(results: Mapping[str, Any]) -> str:
    """One line per evaluated set of :func:`evaluate_sets`' results: ``name (n=N): metric value ...``."""
    lines = []
    for name, entry in results.items():
        if isinstance(entry, Mapping) and "n" in entry:
            values = " ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in entry.items()
                              if k not in ("n", "counts"))
            lines.append(f"{name} (n={entry['n']}): {values}")
    return "\n".join(lines)


IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def inference_items(input_dir: str | Path | None, datalist: str | Path, split: str = "test",
                    classes: Sequence[str] = IMAGE_CLASSES) -> list[dict[str, Any]]:
    """Items ``{"image": path}`` for the inference bundles' ``dataset#data``.

    Args:
        input_dir: a folder of images (any size, grey or RGB); when None, the ``split`` of
            ``datalist`` is used.
        datalist: a prepared datalist.
        split: its split.
        classes: classes of the datalist to keep.

    Raises:
        BusmonaiInputError: a missing or empty folder, or a bad datalist.
    """
    from busmonai.data.dataset import datalist_split

    if input_dir is not None:
        folder = Path(input_dir)
        if not folder.is_dir():
            raise BusmonaiInputError(f"{folder}: input_dir not found; pass a folder of images with --input_dir")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise BusmonaiInputError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in input_dir")
        return [{"image": str(p)} for p in files]
    return [{"image": item["image"]} for item in datalist_split(datalist, split, classes, keys=("image",))]


@torch.no_grad()
def classification_preview_rows(network: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Preview for classifiers: validation images sorted by predicted malignancy (top row) over
    tiles filled from the bottom to the height of p(malignant) (bottom row)."""
    was_training = network.training
    network.eval()
    prob = torch.softmax(network(images).float(), dim=1)[:, -1]
    network.train(was_training)
    order = prob.argsort()
    height = images.shape[-2]
    levels = torch.arange(height, 0, -1, device=images.device).float() / height
    bars = (levels[None, :, None] <= prob[order][:, None, None]).float().expand(-1, -1, images.shape[-1])
    return [images[order], bars[:, None]]


@torch.no_grad()
def segmentation_preview_rows(network: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> list[torch.Tensor]:
    """Preview for segmenters: images, true masks and predicted masks (three rows)."""
    was_training = network.training
    network.eval()
    pred = (network(images).argmax(dim=1, keepdim=True) > 0).float()
    network.train(was_training)
    return [images, masks, pred]
