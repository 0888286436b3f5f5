"""The stage chain: which bundle reads which upstream checkpoint, and one way to train a stage.

Every stage is a bundle under ``bundles/<stage>/``; a trained stage leaves its product in its
``output_dir`` (``model.pt``; the LoRA stage an ``adapter.safetensors``). A later stage reads the
products of the stages it :attr:`Stage.needs` through one config key each
(:data:`CHECKPOINT_KEYS`). The demo, the CLI and the scripts all take that knowledge from here:

==============  ==========================  ===================================
stage           needs                       makes
==============  ==========================  ===================================
autoencoder                                 ``model.pt`` (``AutoencoderKL``)
ldm             autoencoder                 ``model.pt``, ``model_raw.pt``
controlnet      autoencoder, ldm            ``model.pt``, ``model_raw.pt``
lora            autoencoder, ldm            ``adapter.safetensors``
scmg                                        ``model.pt`` (mask generator)
segmentation                                ``model.pt``
classification                              ``model.pt``
==============  ==========================  ===================================

Synthesis (``busmonai generate``, the ControlNet bundle's ``inference.json``) needs the
autoencoder and the LDM, the ControlNet unless the LDM reads the mask itself or the mode is
text-only, and the SCMG generator for SCMG masks: :func:`synthesis_needs`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from busmonai.bundles import bundle_config, run_bundle_process, run_config
from busmonai.errors import BusmonaiInputError

__all__ = ["CHECKPOINT_KEYS", "STAGES", "Stage", "product_path", "synthesis_needs", "train_stage",
           "upstream_checkpoints"]


@dataclass(frozen=True)
class Stage:
    """One bundle of the chain.

    Attributes:
        name: the bundle folder under ``bundles/``.
        needs: the stages whose products it reads, in chain order.
        product: the file its training leaves in ``output_dir``.
    """

    name: str
    needs: tuple[str, ...] = ()
    product: str = "model.pt"


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("autoencoder"),
    Stage("ldm", ("autoencoder",)),
    Stage("controlnet", ("autoencoder", "ldm")),
    Stage("lora", ("autoencoder", "ldm"), "adapter.safetensors"),
    Stage("scmg"),
    Stage("segmentation"),
    Stage("classification"),
)}
"""The stages by name, in chain order."""

CHECKPOINT_KEYS: dict[str, str] = {"autoencoder": "autoencoder_ckpt", "ldm": "ldm_ckpt",
                                   "controlnet": "controlnet_ckpt", "lora": "lora_adapter", "scmg": "scmg_ckpt"}
"""The config key through which later stages (and synthesis) read a stage's product."""


def stage(name: str) -> Stage:
    """The stage called ``name``.

    Raises:
        BusmonaiInputError: an unknown stage.
    """
    if name not in STAGES:
        raise BusmonaiInputError(f"unknown stage {name!r}; use one of {', '.join(STAGES)}")
    return STAGES[name]


def product_path(runs: str | Path, name: str) -> Path:
    """Where a stage trained into ``runs/<stage>`` leaves its product."""
    return Path(runs) / name / stage(name).product


def upstream_checkpoints(name: str, runs: str | Path) -> dict[str, str]:
    """The config overrides that point stage ``name`` at its upstream products in ``runs``."""
    return {CHECKPOINT_KEYS[need]: str(product_path(runs, need)) for need in stage(name).needs}


def synthesis_needs(mode: str = "full", mask_source: str = "ellipse", mask_input: bool = False) -> tuple[str, ...]:
    """The stages whose products synthesis reads.

    Args:
        mode: ``full``, ``text`` (prompt only) or ``mask``.
        mask_source: ``ellipse``, ``real`` or ``scmg``.
        mask_input: the LDM reads the mask as an input channel (no ControlNet).
    """
    needs: tuple[str, ...] = ("autoencoder", "ldm")
    if mode != "text" and not mask_input:
        needs += ("controlnet",)
    if mask_source == "scmg":
        needs += ("scmg",)
    return needs


def train_stage(name: str, runs: str | Path, datalist: str | Path, configs: Sequence[str] = ("train.json",),
                minutes: float | None = None, overrides: Mapping[str, Any] | None = None,
                output_dir: str | Path | None = None, log_file: str | Path | None = None,
                trainer_handlers: Sequence[Any] = (), process: bool = False) -> dict[str, Any]:
    """Train one stage from scratch and return its record.

    The stage reads its upstream products from ``runs/<stage>/`` (:func:`upstream_checkpoints`;
    ``overrides`` may point elsewhere) and trains into ``output_dir`` (default ``runs/<stage>``).

    Args:
        name: the stage.
        runs: the folder of the chain's runs.
        datalist: the prepared datalist to train on.
        configs: the bundle's config files, merged in order (e.g. ``train.json``, ``mask_input.json``).
        minutes: the wall-clock budget (``max_minutes``); None keeps the bundle's.
        overrides: further config keys.
        output_dir: where to train (default ``runs/<stage>``).
        log_file: send the bundle's log there instead of the terminal (in-process runs).
        trainer_handlers: handlers to attach to the trainer (in-process runs).
        process: run ``python -m monai.bundle run`` in a child process and record its peak memory.

    Returns:
        ``{"stage", "output_dir", "product", "seconds", "iterations", "epochs", "loss",
        "validation", "metrics"}`` (and ``peak_rss_mb`` for a child process).

    Raises:
        BusmonaiInputError: an unknown stage, or an upstream product that is missing.
        RuntimeError: the run finished without writing its product.
    """
    spec = stage(name)
    folder = Path(output_dir) if output_dir is not None else Path(runs) / name
    settings: dict[str, Any] = {"datalist": str(datalist), "output_dir": str(folder), "resume": False,
                                **upstream_checkpoints(name, runs), **(overrides or {})}
    if minutes is not None:
        settings["max_minutes"] = minutes
    for need in spec.needs:
        path = Path(settings[CHECKPOINT_KEYS[need]])
        if not path.is_file():
            raise BusmonaiInputError(f"{path}: the {need} product that {name} needs is missing; train {need} first")
    files = [bundle_config(name, config) for config in configs]
    record: dict[str, Any] = {"stage": name, "output_dir": str(folder)}
    if process:
        record.update(run_bundle_process(files, settings))
    else:
        start = time.perf_counter()
        run_config(files, log_file=log_file, trainer_handlers=trainer_handlers, **settings)
        record["seconds"] = round(time.perf_counter() - start, 1)
    product = folder / spec.product
    if not product.is_file():
        raise RuntimeError(f"{name} wrote no {spec.product} in {folder}")
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    record.update(product=str(product), iterations=metrics.get("iterations"), epochs=metrics.get("epochs"),
                  loss=metrics.get("loss"), validation=metrics.get("validation", {}), metrics=metrics)
    return record
