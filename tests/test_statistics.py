"""Paired differences across seeds and their 95 % intervals, on numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from busmonai.experiments.statistics import paired_difference


def test_the_interval_of_known_differences() -> None:
    # differences 0.01, 0.02, 0.03, 0.04, 0.05: mean 0.03, sd 0.0158114, t(0.975, 4) = 2.776445
    arm = {s: 0.80 + 0.01 * (s + 1) for s in range(5)}
    base = {s: 0.80 for s in range(5)}
    d = paired_difference(arm, base)
    half = 2.776445 * 0.0158114 / math.sqrt(5)
    assert d.n == 5 and d.mean == pytest.approx(0.03)
    assert d.low == pytest.approx(0.03 - half, abs=1e-6) and d.high == pytest.approx(0.03 + half, abs=1e-6)
    assert d.beats and d.meets(0.02) and not d.meets(0.04)
    assert "beats; goal >= +0.02 met" in d.text(0.02)


def test_a_noisy_gain_does_not_beat_and_pairs_only_shared_seeds() -> None:
    d = paired_difference({0: 0.90, 1: 0.70, 2: 0.85, 7: 0.99}, {0: 0.80, 1: 0.80, 2: 0.80})
    assert d.n == 3 and d.mean == pytest.approx(0.05 / 3) and d.low < 0 < d.high and not d.beats
    one = paired_difference({0: 0.9}, {0: 0.8})
    assert one.n == 1 and not one.beats and math.isinf(one.low)
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 1.0}, {1: 1.0})
