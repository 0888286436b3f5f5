from __future__ import annotations

import pytest

from busmonai.data.splits import parse_fractions, stratified_split
from busmonai.errors import BusmonaiInputError


def test_stratified_counts_and_determinism() -> None:
    classes = ["benign"] * 50 + ["malignant"] * 20 + ["normal"] * 10
    a = stratified_split(classes, (0.7, 0.1, 0.2), seed=3)
    assert a == stratified_split(classes, (0.7, 0.1, 0.2), seed=3)
    assert a != stratified_split(classes, (0.7, 0.1, 0.2), seed=4)
    for cls, n in (("benign", 50), ("malignant", 20), ("normal", 10)):
        picked = [s for s, c in zip(a, classes) if c == cls]
        assert picked.count("training") == round(0.7 * n)
        assert picked.count("validation") == round(0.1 * n)
        assert picked.count("test") == n - round(0.7 * n) - round(0.1 * n)


@pytest.mark.parametrize("text", ["0.8,0.2", "0.9,0.2,0.1", "a,b,c", "-0.1,0.6,0.5"])
def test_bad_fractions(text: str) -> None:
    with pytest.raises(BusmonaiInputError, match="--split"):
        parse_fractions(text)
