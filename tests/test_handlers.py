"""Shared Ignite handlers on small engines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
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


def test_stage_progress_summarises_the_run() -> None:
    import io

    from busmonai.engines.handlers import StageProgress

    stream = io.StringIO()
    bar = StageProgress("ldm", stream=stream)
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(0.5 / (engine.state.iteration))})
    bar.attach(trainer)
    trainer.run([0, 1, 2], max_epochs=2)
    assert bar.summary["iterations"] == 6 and bar.summary["new_iterations"] == 6 and not bar.summary["failed"]
    assert bar.summary["loss"] == pytest.approx(0.5 / 6) and bar.summary["iterations_per_second"] > 0
    last = stream.getvalue().strip().splitlines()[-1]
    assert last.startswith("ldm: 6 iterations in ") and "it/s), last loss 0.0833" in last

    failing = StageProgress("ldm", stream=io.StringIO())
    broken = Engine(lambda engine, batch: 1 / 0)
    failing.attach(broken)
    with pytest.raises(ZeroDivisionError):  # the error still reaches the caller
        broken.run([0], max_epochs=1)
    assert failing.summary["failed"] and "FAILED" in failing.stream.getvalue()


def test_run_config_sends_the_bundle_log_to_a_file(datalist32: Path, tmp_path: Path, capfd) -> None:
    """Checked at the file-descriptor level: MONAI's own loggers hold the stdout of import time."""
    import logging

    from busmonai.bundles import bundle_config, run_config
    from busmonai.engines.handlers import StageProgress

    handlers_before = {name: list(lg.handlers) for name, lg in logging.root.manager.loggerDict.items()
                       if isinstance(lg, logging.Logger)}
    bar = StageProgress("segmentation")
    run_config([bundle_config("segmentation")], log_file=tmp_path / "train.log", trainer_handlers=[bar],
               datalist=str(datalist32), output_dir=str(tmp_path / "seg"), image_size=32, max_epochs=2, resume=False)
    printed = capfd.readouterr()
    assert "Epoch" not in printed.out + printed.err  # the per-iteration log is not on the terminal ...
    assert "Epoch" in (tmp_path / "train.log").read_text()  # ... but in the run's log file
    assert printed.err.strip().splitlines()[-1].startswith("segmentation: ") and bar.summary["iterations"] > 0
    # afterwards every logger prints where it printed before (the bundle's logging.conf has
    # replaced the root's handlers by its console handler, as it does without the redirect)
    loggers = [logging.getLogger(), *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    assert not [lg.name for lg in loggers for h in lg.handlers if isinstance(h, logging.FileHandler)
                and h.baseFilename == str(tmp_path / "train.log")]
    assert any(type(h) is logging.StreamHandler for h in logging.getLogger().handlers)
    for name, handlers in handlers_before.items():
        assert len(logging.getLogger(name).handlers) == len(handlers), name


def test_time_annealed_lr_follows_the_budget_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant (the scheduler's rate) before the last ``fraction`` of the budget, then a cosine
    to zero; the rate set on the optimizer is the scheduler's times that factor."""
    from busmonai.engines import handlers
    from busmonai.engines.handlers import TimeAnnealedLR
    from busmonai.errors import BusmonaiInputError

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    anneal = TimeAnnealedLR(scheduler, max_minutes=10, fraction=0.5)
    assert [anneal.factor(s) for s in (0, 299, 300)] == [1.0, 1.0, 1.0]
    assert anneal.factor(450) == pytest.approx(0.5) and anneal.factor(600) == pytest.approx(0.0)
    assert anneal.factor(900) == pytest.approx(0.0)  # past the budget: still zero
    clock = iter([0.0, 450.0, 540.0])  # start, then the two iterations
    monkeypatch.setattr(handlers.time, "perf_counter", lambda: next(clock))
    rates = []
    trainer = Engine(lambda engine, batch: rates.append(optimizer.param_groups[0]["lr"]))
    anneal.attach(trainer)
    trainer.run([0, 1], max_epochs=1)
    assert rates == [pytest.approx(0.05), pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 0.8)))]
    off = Engine(lambda engine, batch: rates.append(optimizer.param_groups[0]["lr"]))
    TimeAnnealedLR(scheduler, max_minutes=10, fraction=0.0).attach(off)
    optimizer.param_groups[0]["lr"] = 0.1
    off.run([0], max_epochs=1)
    assert rates[-1] == 0.1
    with pytest.raises(BusmonaiInputError, match="lr_anneal_fraction"):
        TimeAnnealedLR(scheduler, max_minutes=10, fraction=1.5)
