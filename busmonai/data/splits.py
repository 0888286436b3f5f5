"""Seeded, class-stratified train / validation / test splits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from busmonai.errors import BusmonaiInputError

SPLIT_NAMES: tuple[str, str, str] = ("training", "validation", "test")


def parse_fractions(text: str | Sequence[float]) -> tuple[float, float, float]:
    """Parse ``"0.8,0.0,0.2"`` (or a sequence) into three non-negative fractions summing to 1.

    Raises:
        BusmonaiInputError: not three numbers, a negative or non-finite one, or a sum other than 1.
    """
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError as err:
        raise BusmonaiInputError(f"--split {text!r}: expected three numbers like 0.8,0.0,0.2") from err
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise BusmonaiInputError(
            f"--split {text!r}: expected three non-negative fractions (train, validation, test) "
            "summing to 1, like 0.8,0.0,0.2"
        )
    return values[0], values[1], values[2]


def stratified_split(
    classes: Sequence[str], fractions: tuple[float, float, float], seed: int
) -> list[str]:
    """Assign each item to a split, class by class, with a seeded shuffle.

    Within each class the items are shuffled by ``np.random.default_rng([seed, k])`` (k: the
    class's rank in sorted order) and cut by rounded fractions, the test split taking the rest.
    The same classes, fractions and seed always give the same assignment.

    Args:
        classes: the class of each item, in item order.
        fractions: (train, validation, test) fractions.
        seed: the split seed.

    Returns:
        The split name (``training``, ``validation`` or ``test``) of each item.
    """
    assignment = [""] * len(classes)
    for rank, cls in enumerate(sorted(set(classes))):
        indices = np.array([i for i, c in enumerate(classes) if c == cls])
        order = indices[np.random.default_rng([seed, rank]).permutation(len(indices))]
        n_train = int(round(len(order) * fractions[0]))
        n_val = min(int(round(len(order) * fractions[1])), len(order) - n_train)
        for position, index in enumerate(order):
            split = 0 if position < n_train else 1 if position < n_train + n_val else 2
            assignment[int(index)] = SPLIT_NAMES[split]
    return assignment
