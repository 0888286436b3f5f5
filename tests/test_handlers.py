"""Shared Ignite handlers on small engines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine

from busmonai.engines.handlers import MetricsWriter


def test_metrics_writer_keeps_numpy_scalar_metrics(tmp_path: Path) -> None:
    """MONAI's ROCAUC returns np.float32 when predictions tie: metrics.json must still hold it."""
    validator = Engine(lambda engine, batch: None)
    validator.state.metrics = {"val_auc": np.float32(0.75), "val_f1": 0.5, "val_loss": torch.tensor(1.0),
                               "val_curve": [0.1, 0.2]}
    validator.state.best_metric, validator.state.best_metric_epoch = 0.8, 2
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(0.25)})
    MetricsWriter(tmp_path / "metrics.json", validator, extra={"task": "classification"}).attach(trainer)
    trainer.run([0, 1], max_epochs=2)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["validation"] == {"val_auc": 0.75, "val_f1": 0.5}
    assert metrics["iterations"] == 4 and metrics["epochs"] == 2 and metrics["loss"] == 0.25
    assert metrics["best_metric"] == 0.8 and metrics["best_metric_epoch"] == 2 and metrics["task"] == "classification"


def test_preview_grid_by_iterations() -> None:
    """Previews every N iterations, whatever the epoch length, plus one at the end."""
    import pytest

    from busmonai.engines.handlers import PreviewGrid

    calls: list[int] = []
    grid = PreviewGrid(lambda engine: calls.append(engine.state.iteration) or [torch.zeros(1, 1, 4, 4)],
                       path=Path.cwd() / "grid.png", interval=3, every="iteration")
    engine = Engine(lambda e, b: None)
    grid.attach(engine)
    engine.run(range(2), max_epochs=4)  # 8 iterations, 2 per epoch
    assert calls == [3, 6, 8]
    with pytest.raises(ValueError, match="every"):
        PreviewGrid(lambda engine: [], path="x.png", every="minute")
