"""Ignite handlers shared by every stage's trainer.

- :class:`ResumeFromLatest`: on start, restore the newest resume checkpoint in ``output_dir`` that
  loads (network, optimizer, trainer state), so re-running a bundle with the same ``output_dir``
  continues where it stopped; broken checkpoints are skipped with a warning.
- :class:`TimeBudget`: stop training after a wall-clock budget (``max_minutes``), used by the
  demo and the benchmarks to size runs for this CPU.
- :class:`TimeAnnealedLR`: the learning rate annealed to zero over the end of that budget.
- :class:`StageProgress`: a progress bar for a training run and a one-line summary at its end, for
  terminals where the per-iteration log goes to a file instead.
- :class:`PreviewGrid`: a PNG grid (and a TensorBoard image) of samples or reconstructions.
- :class:`MetricsWriter`: ``metrics.json`` at the end: iterations, time, best validation metric.
- :class:`ValidateAtEnd`: one last validation when training ends off the validation interval.
- :class:`AdaptiveSamplerUpdate`: after each validation, LT-GenAug's agents learn from the
  validation metric and change how many synthetic images of each class enter a batch.
- :class:`AdapterState`, :class:`AdapterSaver`: a LoRA adapter's weights as a resume-checkpoint
  entry, and ``adapter.safetensors`` written during training.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from busmonai.checkpoint_io import state_dict_mismatch
from busmonai.data.imageio import save_png
from busmonai.errors import BusmonaiInputError
from busmonai.files import write_json_atomic
from busmonai.networks.lora import is_lora_key
from busmonai.networks.lora_file import save_adapter
from busmonai.visualize import grid

logger = logging.getLogger(__name__)

RESUME_PREFIX = "resume"
_RESUME_RE = re.compile(rf"^{RESUME_PREFIX}_.*=(\d+)\.pt$")


def resume_checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``resume_*=N.pt`` checkpoints in ``output_dir``, most recently written first (ties:
    highest N first)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(p.stat().st_mtime_ns, int(m.group(1)), p) for p in folder.iterdir() if (m := _RESUME_RE.match(p.name))]
    return [p for *_, p in sorted(found, reverse=True)]


def latest_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The most recently written ``resume_*=N.pt`` checkpoint in ``output_dir`` (ties: highest N), or None."""
    found = resume_checkpoints(output_dir)
    return found[0] if found else None


class NullSummaryWriter:
    """A TensorBoard ``SummaryWriter`` stand-in that writes nothing: the ``summary_writer`` of the
    ranks above 0 in multi-GPU runs, so that only rank 0 creates an events file."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def summary_writer(log_dir: str | Path) -> Any:
    """A ``SummaryWriter`` on ``log_dir`` on rank 0 (or without torch.distributed), else a
    :class:`NullSummaryWriter`."""
    import torch.distributed as dist
    from torch.utils.tensorboard import SummaryWriter

    if dist.is_available() and dist.is_initialized() and dist.get_rank() > 0:
        return NullSummaryWriter()
    return SummaryWriter(log_dir=str(log_dir))


def writes_files(handler: Any) -> bool:
    """True for handlers that write to ``output_dir`` (kept on rank 0 only in multi-GPU runs)."""
    from monai.handlers import CheckpointSaver, TensorBoardHandler

    return isinstance(handler, (CheckpointSaver, TensorBoardHandler, PreviewGrid, MetricsWriter))


class ResumeFromLatest:
    """Restore ``load_dict`` from the newest resume checkpoint of ``output_dir`` that loads, when
    training starts.

    Checkpoints are tried newest first. One that cannot be read (truncated by a kill or a full
    disk, or not a checkpoint) is skipped with a warning naming it, and the next older one is
    tried; when none loads, training starts from scratch (with a warning). Skipped files are
    removed with the other stale ones when training completes. A complete checkpoint that lacks an
    entry of ``load_dict`` or does not fit its networks / optimizers (another stage's, other
    settings) is an input error naming the file: it is somebody's work, not a crash artefact.
    Loading is ``torch.load(weights_only=True)`` on the CPU.

    Args:
        output_dir: the stage's output folder (where the saver with ``file_prefix="resume"`` writes).
        load_dict: objects to restore, as given to the saver (must include ``trainer``).
        enabled: False to start from scratch even if a checkpoint exists.
    """

    def __init__(self, output_dir: str | Path, load_dict: Mapping[str, Any], enabled: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.skipped: list[Path] = []

    def attach(self, engine: Engine) -> None:
        """Restore at ``Events.STARTED``; at ``COMPLETED`` drop resume files but the newest good one."""
        engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.COMPLETED, self._drop_stale)

    def _drop_stale(self, engine: Engine) -> None:
        found = resume_checkpoints(self.output_dir)
        keep = next((path for path in found if path not in self.skipped), None)
        for path in found:
            if path != keep:
                path.unlink(missing_ok=True)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:  # a fresh start: earlier resume files are stale
            for path in resume_checkpoints(self.output_dir):
                path.unlink()
            return
        self.skipped = []
        for path in resume_checkpoints(self.output_dir):
            checkpoint, problem = self._read_checked(path)
            if checkpoint is None:  # truncated by a kill or a full disk, or not a checkpoint at all
                logger.warning("%s: skipped, cannot resume from it (%s); trying an older resume checkpoint",
                               path, problem)
                self.skipped.append(path)
                continue
            if problem:  # a complete checkpoint of other networks: the user's work, never skipped silently
                raise BusmonaiInputError(
                    f"{path}: cannot resume, {problem}; use the settings it was trained with, another "
                    "output_dir, or --resume false to start again (that removes it)")
            self._restore(engine, path, checkpoint)
            return
        if self.skipped:
            logger.warning("no resume checkpoint in %s could be loaded (skipped %s): training starts from scratch",
                           self.output_dir, ", ".join(p.name for p in self.skipped))

    def _read_checked(self, path: Path) -> tuple[Mapping[str, Any] | None, str]:
        """``(checkpoint, "")`` if ``path`` can restore ``load_dict``; ``(None, why)`` if it cannot be
        read as a checkpoint; ``(checkpoint, why)`` if it is one that does not fit ``load_dict``.
        Nothing is changed."""
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
            reason = (str(err).split(". ") or [""])[0].strip()  # torch's messages run on for lines
            return None, f"not a readable checkpoint: {type(err).__name__}{': ' + reason if reason else ''}"
        if not isinstance(checkpoint, Mapping):
            return None, f"it holds a {type(checkpoint).__name__}, not a dict of states"
        missing = [key for key in self.load_dict if key not in checkpoint]
        if missing:
            return checkpoint, f"it has no {', '.join(map(repr, missing))} entry (another stage's checkpoint?)"
        for key, obj in self.load_dict.items():
            state = checkpoint[key]
            if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
                obj = obj.module
            if isinstance(obj, torch.nn.Module):
                details = state_dict_mismatch(obj, state) if isinstance(state, Mapping) else "not a state dict"
                if details:
                    return checkpoint, f"its '{key}' does not fit the configured network ({details})"
            elif isinstance(obj, torch.optim.Optimizer):
                groups = state.get("param_groups") if isinstance(state, Mapping) else None
                if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups] != [
                        len(g["params"]) for g in obj.param_groups]:
                    return checkpoint, f"its '{key}' has other parameter groups than the configured optimizer"
        return checkpoint, ""

    def _restore(self, engine: Engine, path: Path, checkpoint: Mapping[str, Any]) -> None:
        max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint, strict=True)
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            # after the checks above this is rare, and some objects may be restored already
            raise BusmonaiInputError(
                f"{path}: cannot resume, the checkpoint does not fit the configured objects ({err}); "
                "remove that file, use another output_dir or pass --resume false"
            ) from err
        if max_epochs is not None and engine.state.epoch >= max_epochs:
            logger.info("%s is already at epoch %d of %d", path, engine.state.epoch, max_epochs)
        engine.state.max_epochs = max(max_epochs or 0, engine.state.epoch)
        logger.info("resumed from %s at iteration %d", path, engine.state.iteration)
        engine.state.resumed_from = str(path)  # type: ignore[attr-defined]
        engine.state.resumed_iteration = engine.state.iteration  # type: ignore[attr-defined]


class TimeBudget:
    """Terminate the engine once ``max_minutes`` of wall-clock time have passed (0: no limit)."""

    def __init__(self, max_minutes: float = 0.0) -> None:
        self.max_seconds = 60.0 * float(max_minutes or 0.0)
        self.start = 0.0

    def attach(self, engine: Engine) -> None:
        """Check after every iteration."""
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _start(self, engine: Engine) -> None:
        self.start = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        if self.max_seconds > 0 and time.perf_counter() - self.start >= self.max_seconds:
            logger.info("time budget of %.1f min reached at iteration %d", self.max_seconds / 60, engine.state.iteration)
            engine.terminate()


class TimeAnnealedLR:
    """Anneal the learning rate to zero over the last ``fraction`` of a wall-clock budget.

    The stages train for ``max_minutes``, not a number of steps, so a step-based decay cannot
    know where the run ends; this handler reads the elapsed share of the budget instead. Before
    the last ``fraction`` the rate is the scheduler's (e.g. the warm-up, then constant); within it
    the rate is the scheduler's times ``0.5 (1 + cos(pi s))``, ``s`` going from 0 to 1 (the cosine
    decay of Loshchilov & Hutter, "SGDR", ICLR 2017, over the budget's end).

    Args:
        lr_scheduler: the run's scheduler (its last rate is the base of the annealed one).
        max_minutes: the run's budget (as :class:`TimeBudget`'s; 0 or ``fraction`` 0: off).
        fraction: the share of the budget, in (0, 1], over which the rate falls to zero.

    Raises:
        BusmonaiInputError: ``fraction`` outside [0, 1].
    """

    def __init__(self, lr_scheduler: Any, max_minutes: float = 0.0, fraction: float = 0.0) -> None:
        if not 0.0 <= float(fraction) <= 1.0:
            raise BusmonaiInputError(f"lr_anneal_fraction must be in [0, 1], got {fraction}")
        self.lr_scheduler = lr_scheduler
        self.max_seconds = 60.0 * float(max_minutes or 0.0)
        self.fraction = float(fraction)
        self.start = 0.0

    def attach(self, engine: Engine) -> None:
        """Set the rate before every iteration (when a budget and a fraction are given)."""
        if self.max_seconds > 0 and self.fraction > 0:
            engine.add_event_handler(Events.STARTED, self._start)
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def _start(self, engine: Engine) -> None:
        self.start = time.perf_counter()

    def factor(self, elapsed_seconds: float) -> float:
        """The multiplier of the scheduler's rate after ``elapsed_seconds`` of the budget."""
        share = min(1.0, max(0.0, elapsed_seconds / self.max_seconds))
        into = (share - (1.0 - self.fraction)) / self.fraction
        return 1.0 if into <= 0 else 0.5 * (1.0 + math.cos(math.pi * min(1.0, into)))

    def __call__(self, engine: Engine) -> None:
        factor = self.factor(time.perf_counter() - self.start)
        for group, rate in zip(self.lr_scheduler.optimizer.param_groups, self.lr_scheduler.get_last_lr()):
            group["lr"] = rate * factor


def _loss_value(output: Any) -> float | None:
    value = output.get("loss") if isinstance(output, Mapping) else output
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    return float(value) if isinstance(value, (int, float)) else None


class StageProgress:
    """A tqdm bar over a training run, then one summary line (and :attr:`summary` for reports).

    With a time budget the bar counts seconds of it (``max_minutes``), otherwise iterations of
    ``max_epochs``; its postfix shows the iteration, the step rate and the last loss.

    Args:
        name: the stage, at the start of the bar and the summary.
        max_minutes: the run's time budget (0: none).
        stream: where the bar and the summary go (stderr by default).
        enabled: False writes nothing (the summary is still recorded).
    """

    def __init__(self, name: str, max_minutes: float = 0.0, stream: Any = None, enabled: bool = True) -> None:
        self.name = name
        self.max_seconds = 60.0 * float(max_minutes or 0.0)
        self.stream = stream
        self.enabled = enabled
        self.summary: dict[str, Any] = {}
        self._bar: Any = None
        self._start = 0.0
        self._first_iteration = 0
        self._loss: float | None = None

    def attach(self, engine: Engine) -> None:
        """Open on start, advance every iteration, close with the summary on completion or error."""
        engine.add_event_handler(Events.STARTED, self._open)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._advance)
        engine.add_event_handler(Events.COMPLETED, self._close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    def _failed(self, engine: Engine, err: Exception) -> None:
        """Close the bar, then raise ``err`` again: Ignite treats a run whose exception handlers all
        return as handled."""
        self._close(engine, failed=True)
        raise err

    def _open(self, engine: Engine) -> None:
        from tqdm import tqdm

        self._start = time.perf_counter()
        self._first_iteration = engine.state.iteration
        if self.max_seconds > 0:
            total, unit = round(self.max_seconds), "s"
        else:
            total, unit = (engine.state.max_epochs or 1) * (engine.state.epoch_length or 1), "it"
        self._bar = tqdm(total=total, desc=self.name, unit=unit, file=self.stream, disable=not self.enabled,
                         leave=False, dynamic_ncols=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]")

    def _rate(self, engine: Engine) -> tuple[int, float, float]:
        done = engine.state.iteration - self._first_iteration
        seconds = time.perf_counter() - self._start
        return done, seconds, done / seconds if seconds > 0 else 0.0

    def _advance(self, engine: Engine) -> None:
        self._loss = _loss_value(engine.state.output)
        if self._bar is None:
            return
        done, seconds, rate = self._rate(engine)
        target = min(int(seconds), self._bar.total) if self.max_seconds > 0 else done
        if target > self._bar.n:
            self._bar.update(target - self._bar.n)
        loss = "" if self._loss is None else f", loss {self._loss:.4f}"
        self._bar.set_postfix_str(f"it {engine.state.iteration}, {rate:.2f} it/s{loss}", refresh=False)

    def _close(self, engine: Engine, failed: bool = False) -> None:
        done, seconds, rate = self._rate(engine)
        self.summary = {"iterations": engine.state.iteration, "new_iterations": done, "seconds": round(seconds, 1),
                        "iterations_per_second": round(rate, 3), "loss": self._loss, "failed": failed}
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled:
            loss = "" if self._loss is None else f", last loss {self._loss:.4f}"
            line = (f"{self.name}: {'FAILED after ' if failed else ''}{done} iterations in {seconds:.0f} s "
                    f"({rate:.2f} it/s){loss}")
            print(line, file=self.stream or sys.stderr, flush=True)


class PreviewGrid:
    """Write a PNG grid (and a TensorBoard image) of what the model makes.

    Args:
        make_rows: ``make_rows(engine) -> list of (N, 1, H, W) tensors in [0, 1]``, one per grid row
            (e.g. inputs then reconstructions, or samples per prompt).
        path: the PNG to (re)write.
        interval: epochs (or iterations, see ``every``) between previews; the grid is always
            written when training completes.
        summary_writer: a TensorBoard ``SummaryWriter`` shared with the stats handlers, or None.
        tag: TensorBoard image tag.
        every: ``"epoch"`` or ``"iteration"``: the unit of ``interval``. Iterations keep the cost
            of previews independent of the dataset size (with 60 images an epoch is one or two
            iterations).
    """

    def __init__(self, make_rows: Callable[[Engine], Sequence[torch.Tensor]], path: str | Path,
                 interval: int = 10, summary_writer: Any = None, tag: str = "preview", every: str = "epoch") -> None:
        if every not in ("epoch", "iteration"):
            raise ValueError(f"every must be 'epoch' or 'iteration', got {every!r}")
        self.every = every
        self.make_rows = make_rows
        self.path = Path(path)
        self.interval = max(1, int(interval))
        self.summary_writer = summary_writer
        self.tag = tag

    def attach(self, engine: Engine) -> None:
        """Run every ``interval`` epochs / iterations and at completion."""
        event = Events.EPOCH_COMPLETED if self.every == "epoch" else Events.ITERATION_COMPLETED
        engine.add_event_handler(event(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        with torch.no_grad():
            rows = [r.detach().float().cpu().clamp(0, 1) for r in self.make_rows(engine)]
        ncols = max(r.shape[0] for r in rows)
        tiles: list[np.ndarray] = []
        for row in rows:
            images = [(img[0].numpy() * 255).round().astype(np.uint8) for img in row]
            images += [np.zeros_like(images[0])] * (ncols - len(images))
            tiles.extend(images)
        sheet = grid(tiles, ncols=ncols, pad=2, fill=255)
        save_png(sheet, self.path)
        if self.summary_writer is not None:
            self.summary_writer.add_image(self.tag, sheet[None], engine.state.iteration)
            self.summary_writer.flush()


class ValidateAtEnd:
    """Run ``validator`` once more at completion unless it just ran at the last iteration.

    Args:
        validator: the evaluator that MONAI's ``ValidationHandler`` runs.
        interval: the handler's interval, in iterations (``epoch_level: false``, the bundles'
            setting: validation cost then does not depend on the dataset size).
    """

    def __init__(self, validator: Engine, interval: int) -> None:
        self.validator = validator
        self.interval = max(1, int(interval))

    def attach(self, engine: Engine) -> None:
        """Run at ``Events.COMPLETED``."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration % self.interval != 0:
            self.validator.run(engine.state.epoch)


class MetricsWriter:
    """Write ``metrics.json``: iterations, epochs, seconds, last losses and the validator's best metric.

    Args:
        path: the JSON file.
        validator: the evaluator whose ``best_metric`` / ``metrics`` are recorded, or None.
        loss_keys: keys of the trainer output to record (their last values).
        extra: constant entries to add (e.g. the profile name).
    """

    def __init__(self, path: str | Path, validator: Engine | None = None,
                 loss_keys: Sequence[str] = ("loss",), extra: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.validator = validator
        self.loss_keys = tuple(loss_keys)
        self.extra = dict(extra or {})
        self.start = 0.0

    def attach(self, engine: Engine) -> None:
        """Time from ``STARTED``, write at ``COMPLETED``."""
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.COMPLETED, self)

    def _start(self, engine: Engine) -> None:
        self.start = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output if isinstance(engine.state.output, Mapping) else {}
        data: dict[str, Any] = {
            "iterations": engine.state.iteration,
            "epochs": engine.state.epoch,
            "seconds": round(time.perf_counter() - self.start, 3),
            **{k: float(torch.as_tensor(output[k]).detach()) for k in self.loss_keys if k in output},
            **self.extra,
        }
        if self.validator is not None:
            # numpy scalars too: MONAI's ROCAUC returns np.float32 when predictions tie
            data["validation"] = {k: float(v) for k, v in self.validator.state.metrics.items()
                                  if isinstance(v, (int, float, np.number))}
            data["best_metric"] = float(self.validator.state.best_metric)
            data["best_metric_epoch"] = int(self.validator.state.best_metric_epoch)
        write_json_atomic(data, self.path)


class AdaptiveSamplerUpdate:
    """LT-GenAug's loop: after every validation, reward = metric ** ``power``, a REINFORCE step
    for the agents' last actions, new actions applied to the sampler (docs/method.md section 6).

    The counts per validation are kept in :attr:`history` and written to TensorBoard
    (``synthetic_per_batch/<class>``); :meth:`state_dict` makes the agents and counts part of a
    resume checkpoint.

    Args:
        sampler: a :class:`busmonai.data.adaptive_sampler.ClassAdaptiveBatchSampler`.
        agents: a :class:`busmonai.data.adaptive_sampler.ReinforceClassAgents`.
        metric_name: the validator's metric to reward (e.g. ``val_auc``).
        power: the reward's exponent (LT-GenAug cubes the metric).
        summary_writer: optional TensorBoard writer.
        path: optional JSON file rewritten after every step with :attr:`history`; beside it a PNG
            (same name, ``.png``) plots the agents' choices (synthetic images per batch per class).
        smoothing: the reward is computed from an exponential moving average of the metric,
            ``m <- smoothing * m + (1 - smoothing) * metric`` (0: the raw metric, as LT-GenAug),
            so that one noisy validation does not steer the agents.
    """

    def __init__(self, sampler: Any, agents: Any, metric_name: str = "val_auc", power: float = 3.0,
                 summary_writer: Any = None, path: str | Path | None = None, smoothing: float = 0.0) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise BusmonaiInputError(f"adaptive_reward_smoothing {smoothing}: use a value in [0, 1)")
        self.sampler = sampler
        self.agents = agents
        self.metric_name = metric_name
        self.power = float(power)
        self.summary_writer = summary_writer
        self.path = Path(path) if path else None
        self.smoothing = float(smoothing)
        self.smoothed: float | None = None
        self.history: list[dict[str, Any]] = []

    def attach(self, validator: Engine) -> None:
        """Run at the validator's ``Events.COMPLETED``."""
        validator.add_event_handler(Events.COMPLETED, self)

    def __call__(self, validator: Engine) -> None:
        if self.metric_name not in validator.state.metrics:
            raise BusmonaiInputError(
                f"adaptive sampler: the validator has no metric {self.metric_name!r} "
                f"(it has {', '.join(sorted(validator.state.metrics)) or 'none'}); set adaptive_metric")
        metric = float(validator.state.metrics[self.metric_name])
        if math.isfinite(metric):
            self.smoothed = metric if self.smoothed is None else self.smoothing * self.smoothed + (
                1.0 - self.smoothing) * metric
        reward = self.smoothed ** self.power if math.isfinite(metric) else float("nan")
        advantage = self.agents.update(reward)
        counts = self.agents.act(self.sampler)
        step = len(self.history) + 1
        self.history.append({"step": step, "metric": metric, "smoothed": self.smoothed, "advantage": advantage,
                             "counts": counts})
        if self.summary_writer is not None:
            for cls, count in counts.items():
                self.summary_writer.add_scalar(f"synthetic_per_batch/{cls}", count, step)
        if self.path is not None:
            write_json_atomic({"metric": self.metric_name, "power": self.power, "smoothing": self.smoothing,
                               "history": self.history}, self.path)
            self.plot(self.path.with_suffix(".png"))
        logger.info("adaptive sampler: %s %.4f -> synthetic per batch %s", self.metric_name, metric, counts)

    def plot(self, path: Path) -> Path:
        """The agents' choices: synthetic images per batch of each class, after each validation."""
        from busmonai.visualize import line_chart

        steps = [h["step"] for h in self.history]
        series = {cls: (steps, [h["counts"][cls] for h in self.history]) for cls in self.history[-1]["counts"]}
        return line_chart(series, path, "synthetic images per batch chosen by the agents", xlabel="validation")

    def state_dict(self) -> dict[str, Any]:
        return {"agents": self.agents.state_dict(), "sampler": self.sampler.state_dict(), "history": self.history,
                "smoothed": self.smoothed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.agents.load_state_dict(state.get("agents", {}))
        self.sampler.load_state_dict(state.get("sampler", {}))
        self.history = list(state.get("history", []))
        self.smoothed = state.get("smoothed")


class AdapterState:
    """The adapter weights of ``module`` (plus ``extra`` entries such as an EMA's ``n_averaged``)
    as a ``state_dict`` / ``load_state_dict`` object, so resume checkpoints hold kilobytes of
    adapter instead of the frozen UNet."""

    def __init__(self, module: nn.Module, extra: Iterable[str] = ("n_averaged",)) -> None:
        self.module = module
        self.extra = tuple(extra)

    def _keep(self, key: str) -> bool:
        return is_lora_key(key) or key in self.extra

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter weights under the module's own keys."""
        return {k: v for k, v in self.module.state_dict().items() if self._keep(k)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Load adapter weights; with ``strict``, keys must match exactly."""
        own = set(self.state_dict())
        if strict and set(state) != own:
            diff = sorted(set(state) ^ own)
            raise KeyError(f"adapter state does not fit: {', '.join(diff[:3])}")
        self.module.load_state_dict(dict(state), strict=False)


class AdapterSaver:
    """Ignite handler: :func:`save_adapter` of ``model`` every ``interval`` epochs and at completion.

    Args:
        model: the model whose adapter is saved (the EMA copy).
        path: ``adapter.safetensors``.
        interval: epochs between saves (0: only at completion).
        extra: entries added to the adapter config.
    """

    def __init__(self, model: nn.Module, path: str | Path, interval: int = 1,
                 extra: Mapping[str, Any] | None = None) -> None:
        self.model = model
        self.path = Path(path)
        self.interval = int(interval)
        self.extra = dict(extra or {})

    def attach(self, engine: Any) -> None:
        """Register on ``EPOCH_COMPLETED(every=interval)`` and ``COMPLETED``."""
        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        save_adapter(self.model, self.path, {**self.extra, "iterations": int(engine.state.iteration)})
