"""Readers of the published breast-ultrasound datasets, one module each.

Each reader is ``read_<name>(root: Path) -> list[RawCase]``: it lists the cases of the dataset in
its published layout (docs/method.md section 7), in a deterministic order, and raises
:class:`busmonai.errors.BusmonaiInputError` naming the file when the layout is broken. Loading,
resizing, mask merging and splitting are done once for all readers in ``busmonai.data.prepare``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from busmonai.data.readers.breast import read_breast
from busmonai.data.readers.bus_uclm import read_bus_uclm
from busmonai.data.readers.busi import read_busi
from busmonai.data.readers.folder import read_folder
from busmonai.data.readers.qamebi import read_qamebi
from busmonai.data.readers.stu import read_stu
from busmonai.data.readers.udiat import read_udiat
from busmonai.data.records import RawCase

READERS: dict[str, Callable[[Path], list[RawCase]]] = {
    "busi": read_busi,
    "udiat": read_udiat,
    "breast": read_breast,
    "bus-uclm": read_bus_uclm,
    "qamebi": read_qamebi,
    "stu": read_stu,
    "folder": read_folder,
}
"""Dataset name (as given to ``busmonai prepare``) -> reader."""

DOMAINS: dict[str, str] = {
    "busi": "BUSI",
    "udiat": "UDIAT",
    "breast": "BrEaST",
    "bus-uclm": "BUS-UCLM",
    "qamebi": "QAMEBI",
    "stu": "STU",
    "folder": "folder",
}
"""Dataset name -> the ``domain`` recorded in datalist items."""
