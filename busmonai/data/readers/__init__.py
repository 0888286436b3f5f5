"""Readers of the published breast-ultrasound datasets, one module each.

Each reader is ``read_<name>(root: Path) -> list[RawCase]``: it lists the cases of the dataset in
its published layout (METHOD.md section 7), in a deterministic order, and raises
:class:`busmonai.errors.BusmonaiInputError` naming the file when the layout is broken. Loading,
resizing, mask merging and splitting are done once for all readers in ``busmonai.data.prepare``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from busmonai.data.readers.busi import read_busi
from busmonai.data.records import RawCase

READERS: dict[str, Callable[[Path], list[RawCase]]] = {
    "busi": read_busi,
}
"""Dataset name (as given to ``busmonai prepare``) -> reader."""

DOMAINS: dict[str, str] = {
    "busi": "BUSI",
}
"""Dataset name -> the ``domain`` recorded in datalist items."""
