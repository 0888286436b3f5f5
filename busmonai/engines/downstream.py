"""Training, evaluation and inference helpers of the classification and segmentation bundles.

The papers judge synthetic images by what they do for diagnosis models (docs/method.md section 6):
AUC and F1 of benign-vs-malignant classifiers, Dice of tumor segmenters on the internal test set
and on an external one (STU) — the journal paper (Medical Image Analysis 2025), CP (MICCAI 2025)
and LT-GenAug report these. This module keeps the metric definitions in one place for both
bundles' validation (``train.json``) and test evaluation (``evaluate.json``):

- classification: ``auc`` (MONAI ``ROCAUC``; key metric, selects ``model.pt``), ``f1``,
  ``accuracy``, ``sensitivity``, ``specificity`` (MONAI ``ConfusionMatrix`` with malignant as the
  positive class);
- segmentation: ``dice`` (MONAI ``MeanDice`` of the tumor channel; key metric).

All are Ignite metric handlers attached to a MONAI ``SupervisedEvaluator``. Evaluation refuses
synthetic items: validation and test are always real.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import ConfusionMatrix, MeanDice, ROCAUC, StatsHandler, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose, CopyItemsd
from torch import nn

from busmonai.clinical.classes import IMAGE_CLASSES
from busmonai.data.dataset import LoadPNGd
from busmonai.data.mixing import class_counts
from busmonai.files import write_json_atomic
from busmonai.errors import BusmonaiInputError

__all__ = [
    "TASKS", "assert_real", "classification_preview_rows", "evaluate_sets", "format_results", "image_keys",
    "inference_items", "loaded_keys", "metrics", "postprocessing", "prepare_batch", "segmentation_preview_rows",
]

TASKS: tuple[str, ...] = ("classification", "segmentation")
CONFUSION_METRICS: dict[str, str] = {
    "f1": "f1 score", "accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity",
}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise BusmonaiInputError(f"task {task!r}: use one of {', '.join(TASKS)}")


def image_keys(task: str) -> tuple[str, ...]:
    """Item keys of each task: ``image`` and ``label``, the class (classification) or the mask file
    (segmentation, as MONAI Label passes them)."""
    _check_task(task)
    return ("image", "label")


def loaded_keys(task: str) -> tuple[str, ...]:
    """Item keys holding files to load: the image, and for segmentation the mask (``label``)."""
    _check_task(task)
    return ("image",) if task == "classification" else ("image", "label")


def prepare_batch(task: str) -> Any:
    """The ``prepare_batch`` of ``task`` for MONAI trainers and evaluators: ``(image, label)``."""
    from monai.engines.utils import default_prepare_batch

    _check_task(task)
    return default_prepare_batch


def postprocessing(task: str, num_classes: int = 2) -> Compose:
    """Per-item post-transforms of the evaluator output.

    Classification: ``pred`` -> softmax probabilities, ``pred_class`` -> one-hot argmax, ``label``
    -> one-hot. Segmentation: ``pred`` -> one-hot argmax, ``label`` (the mask) -> one-hot.
    """
    _check_task(task)
    if task == "classification":
        return Compose([
            Activationsd(keys="pred", softmax=True),
            CopyItemsd(keys="pred", names="pred_class"),
            AsDiscreted(keys="pred_class", argmax=True, to_onehot=num_classes),
            AsDiscreted(keys="label", to_onehot=num_classes),
        ])
    return Compose([
        Activationsd(keys="pred", softmax=True),
        AsDiscreted(keys="pred", argmax=True, to_onehot=num_classes),
        AsDiscreted(keys="label", to_onehot=num_classes),
    ])


def metrics(task: str, prefix: str = "val_") -> tuple[dict[str, Any], dict[str, Any]]:
    """``(key_metric, additional_metrics)`` Ignite handlers of ``task``, names prefixed by ``prefix``."""
    _check_task(task)
    if task == "segmentation":
        return {f"{prefix}dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))}, {}
    key = {f"{prefix}auc": ROCAUC(output_transform=from_engine(["pred", "label"]))}
    additional = {
        f"{prefix}{short}": ConfusionMatrix(include_background=False, metric_name=name,
                                            output_transform=from_engine(["pred_class", "label"]))
        for short, name in CONFUSION_METRICS.items()
    }
    return key, additional


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


def evaluate_sets(
    network: nn.Module,
    sets: Mapping[str, Sequence[Mapping[str, Any]]],
    task: str,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
    batch_size: int = 16,
    path: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Evaluate ``network`` on each named real item list with a MONAI ``SupervisedEvaluator``.

    Args:
        network: the trained network (eval mode is set by the evaluator).
        sets: ``{name: items}``, e.g. ``{"test": ..., "STU": ...}``.
        task: ``classification`` or ``segmentation``.
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
    loaded = list(loaded_keys(task))
    for name, items in sets.items():
        if not items:
            raise BusmonaiInputError(f"evaluation set {name!r} is empty")
        assert_real(items, f"evaluation set {name!r}")
        key, additional = metrics(task, prefix="")
        evaluator = SupervisedEvaluator(
            device=torch.device(device), val_data_loader=_loader(items, loaded, image_size, batch_size, num_workers),
            network=network, prepare_batch=prepare_batch(task), postprocessing=postprocessing(task),
            key_val_metric=key, additional_metrics=additional,
            val_handlers=[StatsHandler(iteration_log=False, name=f"evaluate_{name}")],
        )
        evaluator.run()
        results[name] = {k: _finite(v) for k, v in evaluator.state.metrics.items()}
        results[name].update(n=len(items), counts=class_counts(items))
    if path is not None:
        write_json_atomic(results, path)
    return results


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
