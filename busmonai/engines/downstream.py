"""Training, evaluation and inference helpers of the classification and segmentation bundles.

The papers judge synthetic images by what they do for diagnosis models (METHOD.md section 6):
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

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import ConfusionMatrix, MeanDice, ROCAUC, StatsHandler, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose, CopyItemsd
from torch import nn

from busmonai.data.dataset import LoadPNGd
from busmonai.data.imageio import save_png
from busmonai.data.mixing import class_counts
from busmonai.engines.handlers import write_json_atomic
from busmonai.errors import BusmonaiInputError

__all__ = [
    "TASKS", "assert_real", "classification_preview_rows", "evaluate_sets", "format_results", "image_and_mask",
    "image_keys", "metrics", "postprocessing", "predict", "prepare_batch", "segmentation_preview_rows",
]

TASKS: tuple[str, ...] = ("classification", "segmentation")
CONFUSION_METRICS: dict[str, str] = {
    "f1": "f1 score", "accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity",
}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise BusmonaiInputError(f"task {task!r}: use one of {', '.join(TASKS)}")


def image_keys(task: str) -> tuple[str, ...]:
    """Item keys each task loads: ``image`` and ``label`` (classification) or ``mask`` (segmentation)."""
    _check_task(task)
    return ("image", "label") if task == "classification" else ("image", "mask")


def image_and_mask(batchdata: Mapping[str, torch.Tensor], device: torch.device | str | None = None,
                   non_blocking: bool = False, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepare_batch`` for segmentation: ``(image, mask)``; the evaluator's output names the
    mask ``label``."""
    return (batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs),
            batchdata["mask"].to(device=device, non_blocking=non_blocking, **kwargs))


def prepare_batch(task: str) -> Any:
    """The ``prepare_batch`` of ``task`` for MONAI trainers and evaluators."""
    from monai.engines.utils import default_prepare_batch

    _check_task(task)
    return default_prepare_batch if task == "classification" else image_and_mask


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
    """Batches of ``items`` with the PNG files of ``keys`` loaded (no augmentation)."""
    dataset = Dataset(list(items), transform=LoadPNGd(keys, image_size=image_size))
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
    loaded = [k for k in image_keys(task) if k != "label"]
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


@torch.no_grad()
def _forward(network: nn.Module, items: Sequence[Mapping[str, Any]], task: str, device: torch.device | str,
             image_size: int | None, batch_size: int) -> list[torch.Tensor]:
    network.eval()
    outputs: list[torch.Tensor] = []
    for batch in _loader(items, ["image"], image_size, batch_size, 0):
        outputs.append(torch.softmax(network(batch["image"].to(device)).float(), dim=1).cpu())
    return outputs


def predict(
    network: nn.Module,
    items: Sequence[Mapping[str, Any]],
    task: str,
    output_dir: str | Path,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
    batch_size: int = 16,
    class_names: Sequence[str] = ("benign", "malignant"),
) -> Path:
    """Predict every item's image and write the results to ``output_dir``.

    Classification: ``predictions.csv`` and ``predictions.json`` with one row per image: the
    image path, its known ``class`` (if any), one probability per class and the predicted class.
    Segmentation: ``masks/<image name>.png`` (0 / 255 tumor masks) and ``predictions.json`` with
    the image, mask path and tumor area fraction.

    Returns:
        The path of ``predictions.json``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    probabilities = torch.cat(_forward(network, items, task, device, image_size, batch_size))
    rows: list[dict[str, Any]] = []
    if task == "classification":
        for item, prob in zip(items, probabilities):
            row = {"image": item["image"], "class": item.get("class")}
            row.update({f"prob_{name}": round(float(p), 6) for name, p in zip(class_names, prob)})
            row["predicted"] = class_names[int(prob.argmax())]
            rows.append(row)
        with open(out / "predictions.csv", "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        for item, prob in zip(items, probabilities):
            mask = (prob.argmax(dim=0) > 0).numpy()
            target = out / "masks" / Path(item["image"]).name
            save_png((mask * 255).astype(np.uint8), target)
            rows.append({"image": item["image"], "mask": str(target), "area_fraction": round(float(mask.mean()), 6)})
    path = out / "predictions.json"
    path.write_text(json.dumps({"task": task, "n": len(rows), "predictions": rows}, indent=1) + "\n")
    return path


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
