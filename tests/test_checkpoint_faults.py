"""Checkpoints under faults: a write killed midway, broken resume files, the umask, a NaN loss.

Small Ignite engines check the saver and the resume handler directly; tiny autoencoder bundle
runs check them wired into a real stage.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Engine, Events

from bundle_runner import AE_TRAIN, TINY_AUTOENCODER, is_input_error, run_bundle
from busmonai.checkpoint_io import write_checkpoint
from busmonai.engines.checkpoints import (AtomicCheckpointSaver, NonFiniteLossError, StopOnNonFiniteLoss,
                                          non_finite_entry)
from busmonai.engines.handlers import ResumeFromLatest
from busmonai.errors import BusmonaiInputError

RESUME = {"file_prefix": "resume", "save_interval": 2, "epoch_level": False, "n_saved": 1}


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs in the writer (not even ``except Exception``)."""


@pytest.fixture()
def warnings_logged() -> Iterator[list[logging.LogRecord]]:
    """Warnings of the resume handler, caught on its own logger (a bundle's ``logging.conf``
    replaces the root logger's handlers, pytest's ``caplog`` among them)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("busmonai.engines.handlers")
    log.addHandler(handler)
    yield records
    log.removeHandler(handler)


def _toy(nan_at: int = 0) -> tuple[Engine, dict[str, Any]]:
    """A trainer of a 2 -> 1 linear layer (same weights every call); its loss and weights turn NaN
    from iteration ``nan_at`` on (0: never)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(engine: Engine, batch: Any) -> dict[str, float]:
        opt.zero_grad()
        loss = net(torch.ones(1, 2)).pow(2).sum()
        if engine.state.iteration == nan_at:
            loss = loss * float("nan")
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    trainer = Engine(step)
    return trainer, {"network": net, "optimizer": opt, "trainer": trainer}


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())  # hidden temporary files included


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("kwargs", [
    {**RESUME, "save_final": True, "final_filename": "resume_checkpoint_final=0.pt"},
    {"file_prefix": "resume", "save_interval": 1, "epoch_level": True, "n_saved": 1},
    {"save_interval": 2, "epoch_level": False, "n_saved": 2, "save_final": True},
    {"save_final": True, "final_filename": "model.pt", "save_interval": 0},
    {"save_key_metric": True, "key_metric_name": "score", "key_metric_filename": "model.pt"},
    {"save_key_metric": True, "key_metric_name": "score", "key_metric_n_saved": 2, "file_prefix": "best"},
], ids=["resume-iterations", "resume-epochs", "n_saved-2", "final-model", "key-metric-model", "key-metric-top-2"])
def test_saver_writes_the_files_monais_saver_writes(kwargs: dict[str, Any], tmp_path: Path) -> None:
    """Same arguments, same file names and contents as ``monai.handlers.CheckpointSaver``."""
    from monai.handlers import CheckpointSaver

    scores = [0.1, 0.5, 0.3, 0.7, 0.6]
    written = {}
    for saver_class in (CheckpointSaver, AtomicCheckpointSaver):
        out = tmp_path / saver_class.__name__
        trainer, objects = _toy()
        trainer.add_event_handler(Events.EPOCH_COMPLETED,
                                  lambda e: e.state.metrics.update(score=scores[e.state.epoch - 1]))
        saver_class(str(out), objects, **kwargs).attach(trainer)
        trainer.run(range(3), max_epochs=5)
        written[saver_class] = {name: _load(out / name) for name in _names(out)}
    monai, ours = written[CheckpointSaver], written[AtomicCheckpointSaver]
    assert list(ours) == list(monai) and ours
    for name in monai:
        assert ours[name]["trainer"] == monai[name]["trainer"], name
        assert torch.equal(ours[name]["network"]["weight"], monai[name]["network"]["weight"]), name


@pytest.mark.parametrize("fault", [_Killed(), OSError(28, "No space left on device")], ids=["killed", "disk full"])
def test_a_write_that_dies_midway_keeps_the_previous_checkpoint(fault: BaseException, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, objects = _toy()
    AtomicCheckpointSaver(str(tmp_path), objects, **RESUME).attach(trainer)
    trainer.run(range(2), max_epochs=1)
    assert _names(tmp_path) == ["resume_checkpoint_iteration=2.pt"]
    good = (tmp_path / "resume_checkpoint_iteration=2.pt").read_bytes()

    real_save = torch.save

    def dying_save(state: Any, stream: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real_save(state, buffer)
        stream.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half a checkpoint ...
        stream.flush()
        raise fault  # ... then the process dies, or the disk is full

    with monkeypatch.context() as patch, pytest.raises(type(fault)):
        patch.setattr(torch, "save", dying_save)
        trainer.run(range(2), max_epochs=2)  # the save at iteration 4 dies

    assert _names(tmp_path) == ["resume_checkpoint_iteration=2.pt"]  # no truncated =4, no temporary file
    assert (tmp_path / "resume_checkpoint_iteration=2.pt").read_bytes() == good
    resumed, objects = _toy()
    ResumeFromLatest(tmp_path, objects).attach(resumed)
    resumed.run(range(2), max_epochs=2)
    assert resumed.state.resumed_iteration == 2 and resumed.state.iteration == 4


def test_a_failed_overwrite_keeps_the_old_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed name (``model.pt``) is replaced, never rewritten in place."""
    trainer, objects = _toy()
    AtomicCheckpointSaver(str(tmp_path), objects, save_final=True, final_filename="model.pt").attach(trainer)
    trainer.run(range(2), max_epochs=1)
    good = (tmp_path / "model.pt").read_bytes()

    def full_disk(state: Any, stream: Any, *args: Any, **kwargs: Any) -> None:
        stream.write(good[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        trainer.run(range(2), max_epochs=2)
    assert _names(tmp_path) == ["model.pt"] and (tmp_path / "model.pt").read_bytes() == good


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_written_files_honour_the_umask(umask: int, mode: int, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        write_checkpoint({"x": torch.zeros(1)}, tmp_path / "direct.pt")
        trainer, objects = _toy()
        saver = AtomicCheckpointSaver(str(tmp_path), objects, **RESUME, save_final=True, final_filename="model.pt")
        saver.attach(trainer)
        trainer.run(range(2), max_epochs=1)
    finally:
        os.umask(old)
    assert _names(tmp_path) == ["direct.pt", "model.pt", "resume_checkpoint_iteration=2.pt"]
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == mode, (path.name, oct(path.stat().st_mode))


def test_resume_skips_unreadable_checkpoints_and_refuses_foreign_ones(
        tmp_path: Path, warnings_logged: list[logging.LogRecord]) -> None:
    """A truncated or empty file is a crash artefact: skipped, named in a warning, nothing loaded from
    it; with none left, training starts from scratch. A complete checkpoint of other networks (or
    one missing an entry) is somebody's work: an input error naming it, and the file stays."""
    trainer, objects = _toy()
    AtomicCheckpointSaver(str(tmp_path), objects, **RESUME).attach(trainer)
    trainer.run(range(2), max_epochs=1)
    good = (tmp_path / "resume_checkpoint_iteration=2.pt").read_bytes()
    (tmp_path / "resume_checkpoint_iteration=8.pt").write_bytes(good[: len(good) // 2])  # killed mid-write
    (tmp_path / "resume_checkpoint_iteration=6.pt").write_bytes(b"")  # a full disk
    for age, name in enumerate(["resume_checkpoint_iteration=8.pt", "resume_checkpoint_iteration=6.pt",
                                "resume_checkpoint_iteration=2.pt"]):
        os.utime(tmp_path / name, ns=(10**18 - age * 10**9,) * 2)  # newest first, whatever the clock did

    resumed, objects = _toy()
    ResumeFromLatest(tmp_path, objects).attach(resumed)
    resumed.run(range(2), max_epochs=2)
    assert resumed.state.resumed_iteration == 2 and resumed.state.iteration == 4
    messages = [r.getMessage() for r in warnings_logged]
    assert any("resume_checkpoint_iteration=8.pt" in m and "skipped" in m for m in messages), messages
    assert any("resume_checkpoint_iteration=6.pt" in m and "skipped" in m for m in messages), messages
    assert _names(tmp_path) == ["resume_checkpoint_iteration=2.pt"]  # the skipped ones are stale at completion

    for foreign in ({"network": torch.nn.Linear(3, 1).state_dict(), "optimizer": objects["optimizer"].state_dict(),
                     "trainer": {"iteration": 8, "epoch": 4, "epoch_length": 2, "max_epochs": 4}},
                    {"network": objects["network"].state_dict()}):
        torch.save(foreign, tmp_path / "resume_checkpoint_iteration=9.pt")
        refused, refused_objects = _toy()
        ResumeFromLatest(tmp_path, refused_objects).attach(refused)
        with pytest.raises(BusmonaiInputError, match=r"resume_checkpoint_iteration=9\.pt: cannot resume") as info:
            refused.run(range(2), max_epochs=2)
        assert "does not fit" in str(info.value) or "'optimizer'" in str(info.value)
        assert (tmp_path / "resume_checkpoint_iteration=9.pt").is_file()
    (tmp_path / "resume_checkpoint_iteration=9.pt").unlink()

    (tmp_path / "resume_checkpoint_iteration=2.pt").write_bytes(b"")  # only broken files left
    warnings_logged.clear()
    fresh, objects = _toy()
    ResumeFromLatest(tmp_path, objects).attach(fresh)
    fresh.run(range(2), max_epochs=1)
    reference, reference_objects = _toy()
    reference.run(range(2), max_epochs=1)
    assert not hasattr(fresh.state, "resumed_iteration") and fresh.state.iteration == 2
    assert torch.equal(objects["network"].weight, reference_objects["network"].weight)  # nothing half-loaded
    assert any("starts from scratch" in r.getMessage() for r in warnings_logged)
    assert _names(tmp_path) == []  # the broken files went with the stale ones at completion


def test_a_nan_loss_stops_before_any_save(tmp_path: Path) -> None:
    """The final save on the exception path (saver attached first, so it runs) writes nothing."""
    trainer, objects = _toy(nan_at=3)
    AtomicCheckpointSaver(str(tmp_path), objects, **RESUME, save_final=True,
                          final_filename="resume_checkpoint_final=0.pt").attach(trainer)
    StopOnNonFiniteLoss().attach(trainer)
    with pytest.raises(NonFiniteLossError, match="at iteration 3 ") as info:
        trainer.run(range(2), max_epochs=3)
    assert "resume_checkpoint_iteration=2.pt" in str(info.value)
    assert non_finite_entry(objects["network"].state_dict()) is not None  # the weights did turn NaN
    assert _names(tmp_path) == ["resume_checkpoint_iteration=2.pt"]
    assert non_finite_entry(_load(tmp_path / "resume_checkpoint_iteration=2.pt")) is None


def test_non_finite_weights_are_never_saved_even_on_completion(tmp_path: Path) -> None:
    """Ignite's TerminateOnNan ends the run normally: the final save refuses the NaN weights."""
    from ignite.handlers import TerminateOnNan

    trainer, objects = _toy(nan_at=3)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan(lambda output: output["loss"]))
    AtomicCheckpointSaver(str(tmp_path), objects, **RESUME, save_final=True, final_filename="model.pt").attach(trainer)
    trainer.run(range(2), max_epochs=3)
    assert trainer.state.iteration == 3 and _names(tmp_path) == ["resume_checkpoint_iteration=2.pt"]


# tiny autoencoder bundle runs: 11 training images of the phantom, batch 4 -> 2 iterations an epoch

def _ae(datalist: Path, out: Path, **extra: Any) -> Any:
    settings = {"image_size": 32, "batch_size": 4, "val_interval": 100, "preview_interval": 100, **TINY_AUTOENCODER}
    return run_bundle([AE_TRAIN], datalist=str(datalist), output_dir=str(out), **{**settings, **extra})


def test_bundle_resume_skips_a_truncated_and_a_foreign_file(datalist32: Path, tmp_path: Path,
                                                           warnings_logged: list[logging.LogRecord]) -> None:
    straight = _ae(datalist32, tmp_path / "straight", max_epochs=4).parser.get_parsed_content("train#trainer")

    out = tmp_path / "resumed"
    before = _ae(datalist32, out, max_epochs=2).parser.get_parsed_content("train#trainer").state.iteration
    good = out / "resume_checkpoint_final=0.pt"
    data = good.read_bytes()
    (out / "resume_checkpoint_iteration=99.pt").write_bytes(data[: len(data) // 2])  # killed mid-write
    (out / "resume_checkpoint_epoch=50.pt").write_text("not a checkpoint\n")
    planted = [out / "resume_checkpoint_iteration=99.pt", out / "resume_checkpoint_epoch=50.pt", good]
    for age, path in enumerate(planted):
        os.utime(path, ns=(10**18 - age * 10**9,) * 2)

    trainer = _ae(datalist32, out, max_epochs=4).parser.get_parsed_content("train#trainer")
    assert trainer.state.resumed_from == str(good) and trainer.state.resumed_iteration == before
    assert trainer.state.iteration == straight.state.iteration == 2 * before
    skipped = [r.getMessage() for r in warnings_logged if "skipped" in r.getMessage()]
    assert len(skipped) == 2, skipped
    assert "resume_checkpoint_iteration=99.pt" in skipped[0] and "resume_checkpoint_epoch=50.pt" in skipped[1]
    assert sorted(p.name for p in out.glob("resume_*")) == ["resume_checkpoint_final=0.pt"]
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 2 * before


class _NanAt:
    """L1 loss, times NaN at the ``k``-th call (the autoencoder calls it once an iteration)."""

    def __init__(self, k: int) -> None:
        self.k, self.calls = k, 0
        self.l1: Callable[..., torch.Tensor] = torch.nn.L1Loss()

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.l1(pred, target) * (float("nan") if self.calls == self.k else 1.0)


def test_bundle_stops_at_a_nan_loss_without_saving_it(datalist32: Path, tmp_path: Path) -> None:
    out = tmp_path / "ae"
    with pytest.raises(Exception) as info:
        _ae(datalist32, out, max_epochs=10, checkpoint_interval=2, val_interval=2,
            **{"train#trainer#loss_function": _NanAt(5)})
    assert is_input_error(info.value, "at iteration 5 "), info.value
    assert is_input_error(info.value, f"the last good checkpoint is {out / 'resume_checkpoint_iteration=4.pt'}")
    saved = sorted(p.name for p in out.glob("*.pt"))
    assert saved == ["model.pt", "resume_checkpoint_iteration=4.pt"], saved
    for name in saved:
        assert non_finite_entry(_load(out / name)) is None, name
    assert _load(out / "resume_checkpoint_iteration=4.pt")["trainer"]["iteration"] == 4


@pytest.mark.parametrize("damage", ["truncated", "not a cache"])
def test_a_damaged_latent_cache_is_encoded_again(damage: str, trained_autoencoder: Path, datalist32: Path,
                                                 tmp_path: Path) -> None:
    """``latents.pt`` is a cache: a damaged or foreign one is replaced with a warning, never a crash."""
    from busmonai.data.dataset import datalist_split
    from busmonai.engines.latents import cached_latents
    from busmonai.networks.described import load_network

    autoencoder = load_network(trained_autoencoder / "model.pt", "autoencoder_ckpt", "autoencoder")
    items = datalist_split(datalist32, "training", image_size=32, keys=("image", "prompt"))
    cache = tmp_path / "latents.pt"
    fresh = cached_latents(autoencoder, trained_autoencoder / "model.pt", items, 32, cache, progress=False)
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:100])
    else:
        torch.save({"model": {}}, cache)
    with pytest.warns(UserWarning, match="latents.pt: .*encoding the images again"):
        again = cached_latents(autoencoder, trained_autoencoder / "model.pt", items, 32, cache, progress=False)
    assert torch.equal(again["latents"], fresh["latents"]) and again["fingerprint"] == fresh["fingerprint"]
    assert torch.load(cache, weights_only=True)["fingerprint"] == fresh["fingerprint"]  # replaced, readable
    assert [p.name for p in tmp_path.iterdir()] == ["latents.pt"]  # no temporary file left
