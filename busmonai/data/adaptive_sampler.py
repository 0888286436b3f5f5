"""LT-GenAug's class-adaptive synthetic sampler (docs/method.md section 6).

LT-GenAug (Generative Augmentation for Long-tailed Recognition in Ultrasound) does not fix the
real:synthetic ratio in advance: one agent per class decides, after every validation, whether
each mini-batch gets 2 synthetic images of its class fewer, as many, or 2 more (actions -2 / 0 /
+2). The agents are trained by REINFORCE on the cubed validation metric, with a moving-average
baseline that turns the reward into an advantage.

Here that is two pieces the classification bundle wires together in
``bundles/classification/configs/adaptive_sampler.json``:

- :class:`ClassAdaptiveBatchSampler`: every batch is ``batch_size`` real items (one pass over
  the real training items per epoch, reshuffled each epoch) plus ``counts[c]`` synthetic items
  of every class ``c``, drawn in turn from a seeded permutation of that class's synthetic pool;
- :class:`ReinforceClassAgents`: one softmax policy over the three actions per class;
  :meth:`~ReinforceClassAgents.act` changes the sampler's counts, :meth:`~ReinforceClassAgents.update`
  applies the policy gradient ``lr * (reward - baseline) * grad log pi(action)``.

:class:`busmonai.engines.handlers.AdaptiveSamplerUpdate` calls them after each validation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from busmonai.data.mixing import parse_ratio
from busmonai.errors import BusmonaiInputError

ACTIONS: tuple[int, ...] = (-2, 0, 2)


class ClassAdaptiveBatchSampler(Sampler[list[int]]):
    """Batches of real items plus a per-class number of synthetic items.

    Args:
        items: the training items (real and synthetic), each with ``class`` and ``synthetic``.
        batch_size: real items per batch (the last batch of an epoch may hold fewer).
        classes: classes that may receive synthetic items.
        initial: synthetic items per class per batch before the agents act: one count for every
            class, or ``{class: count}`` (:func:`ratio_counts` for a fixed ratio).
        max_per_class: upper bound of every class's count.
        seed: seed of the real shuffles and the synthetic draws.
        drop_last: drop an epoch's last, incomplete batch of real items when there are more real
            items than one batch (as the bundles' plain data loader does).

    Raises:
        BusmonaiInputError: no real items, no synthetic item of any of ``classes``, or bad sizes.
    """

    def __init__(self, items: Sequence[Mapping[str, Any]], batch_size: int, classes: Sequence[str],
                 initial: int | Mapping[str, int] = 0, max_per_class: int = 16, seed: int = 0,
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise BusmonaiInputError(f"adaptive sampler: batch_size {batch_size} must be at least 1")
        start = {cls: int(initial[cls] if isinstance(initial, Mapping) else initial) for cls in classes}
        if not all(0 <= v <= max_per_class for v in start.values()):
            raise BusmonaiInputError(
                f"adaptive sampler: initial count {initial} must lie in [0, max_per_class={max_per_class}]")
        self.real = [i for i, item in enumerate(items) if not item.get("synthetic")]
        if not self.real:
            raise BusmonaiInputError("adaptive sampler: the training set has no real items")
        self.pools = {cls: [i for i, item in enumerate(items) if item.get("synthetic") and item.get("class") == cls]
                      for cls in classes}
        if not any(self.pools.values()):
            raise BusmonaiInputError(
                f"adaptive sampler: no synthetic {'/'.join(classes)} items; pass --synthetic_datalist PATH "
                "(a datalist written by 'busmonai generate')")
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last) and len(self.real) > self.batch_size
        self.max_per_class = int(max_per_class)
        self.counts = {cls: start[cls] if pool else 0 for cls, pool in self.pools.items()}
        self.rng = np.random.default_rng(seed)
        self._cursor = {cls: 0 for cls in classes}
        self._order = {cls: self.rng.permutation(len(pool)).tolist() for cls, pool in self.pools.items()}

    def set_count(self, cls: str, value: int) -> int:
        """Set ``cls``'s synthetic items per batch, clipped to ``[0, max_per_class]`` (0 for a class
        without synthetic items); return the value set."""
        value = min(max(int(value), 0), self.max_per_class) if self.pools.get(cls) else 0
        self.counts[cls] = value
        return value

    def _draw(self, cls: str, n: int) -> list[int]:
        pool, order = self.pools[cls], self._order[cls]
        drawn = []
        for _ in range(n):
            if self._cursor[cls] == len(order):
                self._order[cls] = order = self.rng.permutation(len(pool)).tolist()
                self._cursor[cls] = 0
            drawn.append(pool[order[self._cursor[cls]]])
            self._cursor[cls] += 1
        return drawn

    def __iter__(self) -> Iterator[list[int]]:
        real = [self.real[k] for k in self.rng.permutation(len(self.real))]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = real[start:start + self.batch_size]
            for cls, count in self.counts.items():
                batch.extend(self._draw(cls, count))
            yield batch

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.real) // self.batch_size
        return math.ceil(len(self.real) / self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for cls, value in state.get("counts", {}).items():
            if cls in self.counts:
                self.set_count(cls, value)


def ratio_counts(items: Sequence[Mapping[str, Any]], batch_size: int, ratio: float | str,
                 classes: Sequence[str]) -> dict[str, int]:
    """Synthetic items per class per batch that add ``ratio`` times the batch's real items, split
    like the real items' classes: ``round(ratio * batch_size * n_real(c) / n_real)``.

    With these counts every arm of a sweep takes the same optimizer steps and the same passes
    over the real images (an epoch is one pass over them); the synthetic images are added to
    each batch, not substituted for real ones.
    """
    value = parse_ratio(ratio)
    real = [i for i in items if not i.get("synthetic")]
    if not real:
        raise BusmonaiInputError("the training set has no real items")
    share = {c: sum(i.get("class") == c for i in real) / len(real) for c in classes}
    return {c: int(round(value * batch_size * share[c])) for c in classes}


class ReinforceClassAgents:
    """One REINFORCE agent per class choosing -2 / 0 / +2 synthetic items per batch (LT-GenAug).

    Args:
        classes: the classes, one agent each.
        lr: policy-gradient step on the action logits.
        baseline_momentum: weight of the old baseline in its moving average.
        seed: seed of the action draws.
    """

    def __init__(self, classes: Sequence[str], lr: float = 5.0, baseline_momentum: float = 0.9,
                 seed: int = 0) -> None:
        if lr <= 0:
            raise BusmonaiInputError(f"adaptive sampler: lr {lr} must be positive")
        if not 0 <= baseline_momentum < 1:
            raise BusmonaiInputError(f"adaptive sampler: baseline_momentum {baseline_momentum} must lie in [0, 1)")
        self.classes = list(classes)
        self.lr = float(lr)
        self.momentum = float(baseline_momentum)
        self.logits = {cls: np.zeros(len(ACTIONS)) for cls in self.classes}
        self.baseline: float | None = None
        self.last_actions: dict[str, int] = {}
        self.rng = np.random.default_rng(seed)

    def probabilities(self, cls: str) -> np.ndarray:
        """The policy of ``cls``'s agent over :data:`ACTIONS`."""
        z = self.logits[cls] - self.logits[cls].max()
        p = np.exp(z)
        return p / p.sum()

    def act(self, sampler: ClassAdaptiveBatchSampler) -> dict[str, int]:
        """Draw one action per class and apply it to ``sampler``'s counts; return the new counts."""
        self.last_actions = {}
        for cls in self.classes:
            index = int(self.rng.choice(len(ACTIONS), p=self.probabilities(cls)))
            self.last_actions[cls] = index
            sampler.set_count(cls, sampler.counts.get(cls, 0) + ACTIONS[index])
        return dict(sampler.counts)

    def update(self, reward: float) -> float:
        """Policy-gradient step for the last actions with ``reward``; return the advantage used.

        The first reward only initialises the baseline (advantage 0).
        """
        if not math.isfinite(reward):
            return 0.0
        advantage = 0.0 if self.baseline is None else reward - self.baseline
        if self.last_actions and advantage:
            for cls, index in self.last_actions.items():
                grad = -self.probabilities(cls)
                grad[index] += 1.0
                self.logits[cls] = self.logits[cls] + self.lr * advantage * grad
        self.baseline = reward if self.baseline is None else self.momentum * self.baseline + (1 - self.momentum) * reward
        return advantage

    def state_dict(self) -> dict[str, Any]:
        return {"logits": {c: v.tolist() for c, v in self.logits.items()}, "baseline": self.baseline,
                "last_actions": dict(self.last_actions)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for cls, values in state.get("logits", {}).items():
            if cls in self.logits:
                self.logits[cls] = np.asarray(values, dtype=float)
        self.baseline = state.get("baseline")
        self.last_actions = {c: int(i) for c, i in state.get("last_actions", {}).items() if c in self.logits}
