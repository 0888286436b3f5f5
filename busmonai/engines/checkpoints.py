"""Checkpoints that survive crashes, and a stop at the first non-finite loss.

- :class:`AtomicCheckpointSaver`: MONAI's ``CheckpointSaver`` with the same arguments, but every
  file is written through :func:`busmonai.checkpoint_io.write_checkpoint` (temporary sibling,
  ``fsync``, ``os.replace``, mode 0666 less the umask), the checkpoints it replaces are removed
  only once the new one is complete, and a state holding NaN or infinite tensors is never written.
- :class:`StopOnNonFiniteLoss`: end training with :class:`NonFiniteLossError`, naming the
  iteration and the last good resume checkpoint, before any handler saves the broken weights.

Reading resume checkpoints back (skipping broken ones) is
:class:`busmonai.engines.handlers.ResumeFromLatest`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from busmonai.checkpoint_io import write_checkpoint
from busmonai.errors import BusmonaiInputError

logger = logging.getLogger(__name__)


class NonFiniteLossError(BusmonaiInputError):
    """A training loss became NaN or infinite (usually a learning rate too high for the run)."""


def _tensors(tree: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(key, tensor)`` for the floating-point tensors of a nested state dict."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() or tree.is_complex():
            yield prefix or "the state", tree
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from _tensors(value, f"{prefix}.{index}" if prefix else str(index))


def non_finite_entry(state: Any) -> str | None:
    """The key (``network.conv.weight``) of the first tensor of ``state``, a nested state dict,
    that holds NaN or inf; None when all are finite."""
    return next((key for key, tensor in _tensors(state) if not bool(torch.isfinite(tensor).all())), None)


class _AtomicDiskSaver(DiskSaver):
    """Ignite save handler: atomic writes; removals wait until the next write has completed.

    Ignite's ``Checkpoint`` calls :meth:`remove` on the checkpoint it drops *before* it writes the
    new one; here the removal is only queued, and done after the new file is in place.

    Args:
        dirname: the output folder.
        filename: a fixed file name for every save (MONAI's ``final_filename`` /
            ``key_metric_filename``), or None for Ignite's names (``resume_checkpoint_iteration=N.pt``).
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename
        self.last_written: Path | None = None
        self._pending: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        path = self.dirname / (self.filename or filename)
        broken = non_finite_entry(checkpoint)
        if broken is not None:
            self._pending.clear()  # keep what is on disk: it is the last good state
            logger.error("%s not written: '%s' holds NaN or infinite values; the previous checkpoints are kept",
                         path, broken)
            return
        write_checkpoint(checkpoint, path)  # raises before touching `path` if the write fails
        self.last_written = path
        for name in self._pending:
            if name != path.name:
                (self.dirname / name).unlink(missing_ok=True)
        self._pending.clear()

    def remove(self, filename: str) -> None:
        """Queue ``filename`` for removal after the next complete write."""
        self._pending.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments and file names) with crash-safe files.

    - every file is written to a temporary sibling, ``fsync``'d, then renamed into place, with
      mode 0666 less the umask (:func:`busmonai.checkpoint_io.write_checkpoint`);
    - a checkpoint that ``n_saved`` (or a fixed ``final_filename`` / ``key_metric_filename``)
      replaces is removed only after the new one is completely written;
    - a state holding NaN or infinite tensors is not written (an error is logged and the previous
      file kept), on every path: interval, key metric, completion and exception;
    - after an interval save, ``engine.state.last_checkpoint`` is the file written (the last good
      resume checkpoint that :class:`StopOnNonFiniteLoss` names).

    Args:
        *args: as ``monai.handlers.CheckpointSaver``.
        **kwargs: as ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # MONAI builds its non-atomic savers inside __init__; swap each for the atomic one
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, filename=fixed)

    def interval_completed(self, engine: Engine) -> None:
        """Save as MONAI does, then record the file written as ``engine.state.last_checkpoint``."""
        super().interval_completed(engine)
        written = self._interval_checkpoint.save_handler.last_written  # type: ignore[union-attr]
        if written is not None:
            engine.state.last_checkpoint = str(written)  # type: ignore[attr-defined]


def _losses(output: Any) -> dict[str, float]:
    """The scalar losses of a trainer output: ``loss`` and every ``*_loss`` entry of a mapping, or
    the output itself when it is a number."""
    if isinstance(output, Mapping):
        items = [(k, v) for k, v in output.items() if isinstance(k, str) and (k == "loss" or k.endswith("_loss"))]
    else:
        items = [("loss", output)]
    found = {}
    for key, value in items:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            found[key] = float(value.detach())
        elif isinstance(value, (int, float)):
            found[key] = float(value)
    return found


class StopOnNonFiniteLoss:
    """End training with :class:`NonFiniteLossError` at the first NaN or infinite loss.

    Attach it (``train#handlers``) before the handlers that save or preview the networks: it runs at
    ``ITERATION_COMPLETED``, so no resume checkpoint of that iteration is written, and the final
    save of ``COMPLETED`` never happens (the savers' exception path refuses non-finite weights).
    The message names the last resume checkpoint written in this run
    (``engine.state.last_checkpoint``, set by :class:`AtomicCheckpointSaver`) or else the one the
    run resumed from (``engine.state.resumed_from``).

    Args:
        output_transform: maps the trainer output to ``{name: value}`` of losses to check; by
            default ``loss`` and every ``*_loss`` entry.
    """

    def __init__(self, output_transform: Callable[[Any], Mapping[str, Any]] | None = None) -> None:
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        """Check after every iteration."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        losses = _losses(self.output_transform(output) if self.output_transform else output)
        bad = {key: value for key, value in losses.items() if not math.isfinite(value)}
        if not bad:
            return
        values = ", ".join(f"{key} = {value}" for key, value in bad.items())
        last = getattr(engine.state, "last_checkpoint", None) or getattr(engine.state, "resumed_from", None)
        where = (f"the last good checkpoint is {last}: running again resumes from it"
                 if last else "no resume checkpoint was written before it")
        raise NonFiniteLossError(
            f"training stopped: {values} at iteration {engine.state.iteration} (epoch {engine.state.epoch}); "
            f"no checkpoint of these weights is written and {where}. Lower the learning rate (lr), "
            "or check the data, then train again")
