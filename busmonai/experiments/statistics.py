"""Paired comparisons of sweep arms across seeds, with 95 % confidence intervals.

Two arms trained with the same seeds share everything a seed fixes (the validation holdout, the
initial weights, the batch order of the real images), so the seed-wise difference removes most
of the seed-to-seed spread. For seeds ``s`` present in both arms, ``d_s = arm_s - base_s``; the
interval is ``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)`` (Student's t). An arm **beats** the
baseline only when the whole interval lies above zero; it **meets a goal** (e.g. +0.02 AUC) only
when it beats the baseline and ``mean(d) >= goal``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy import stats

__all__ = ["PairedDifference", "paired_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """Mean seed-wise difference of two arms and its 95 % interval (``low``, ``high``)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def beats(self) -> bool:
        """The whole interval lies above zero (needs at least two seeds)."""
        return self.n >= 2 and self.low > 0.0

    def meets(self, goal: float) -> bool:
        """It beats the baseline by at least ``goal`` on average."""
        return self.beats and self.mean >= goal

    def text(self, goal: float | None = None) -> str:
        """``+0.012 [-0.004, +0.028], 5 seeds: does not beat`` (and the goal's verdict)."""
        verdict = "beats" if self.beats else "does not beat"
        if goal is not None:
            verdict += f"; goal >= +{goal:.2f} {'met' if self.meets(goal) else 'NOT met'}"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}], {self.n} seeds: {verdict}"


def paired_difference(arm: Mapping[int, float], base: Mapping[int, float], level: float = 0.95) -> PairedDifference:
    """The paired difference ``arm - base`` over the seeds both have.

    Args:
        arm: ``{seed: metric}`` of the arm.
        base: ``{seed: metric}`` of the baseline.
        level: the interval's confidence level.

    Raises:
        ValueError: no seed in common.
    """
    seeds = sorted(set(arm) & set(base))
    if not seeds:
        raise ValueError("the two arms share no seed: a paired difference needs the same seeds")
    diffs = [float(arm[s]) - float(base[s]) for s in seeds]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return PairedDifference(mean, -math.inf, math.inf, n)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2.0, n - 1)) * sd / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, n)
