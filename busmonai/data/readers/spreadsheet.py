"""Read the label sheets published with some datasets (.xlsx via openpyxl, .csv via the stdlib).

UDIAT's ``DatasetB.xlsx`` and BrEaST's clinical-data sheet carry the class of each image (and
BrEaST its BI-RADS descriptors). Such sheets often start with a title line or blank rows, so
:func:`read_sheet` looks for the header row: the first row, within the first
:data:`HEADER_SEARCH_ROWS` rows of any worksheet, that names every required column. Column names
are compared by :func:`normalize_header` (case, spaces, underscores and dashes ignored).
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from busmonai.errors import BusmonaiInputError

SHEET_SUFFIXES: tuple[str, ...] = (".xlsx", ".xlsm", ".csv")
"""Sheet formats :func:`read_sheet` reads."""

HEADER_SEARCH_ROWS = 20
"""How many leading rows of each worksheet are searched for the header row."""

ROW_KEY = "_row"
"""Key of each row dict that holds its 1-based row number in the file (for error messages).
It cannot clash with a column: :func:`normalize_header` removes underscores."""

_NON_KEY_RE = re.compile(r"[\s_\-.]+")


def normalize_header(text: object) -> str:
    """Column-name key: lower case without spaces, underscores, dashes and dots.

    ``"Image_filename"``, ``"image filename"`` and ``"ImageFileName"`` all give ``"imagefilename"``.
    """
    return _NON_KEY_RE.sub("", str(text)).lower() if text is not None else ""


def match_column(header: Sequence[str], aliases: Sequence[str]) -> str | None:
    """The column of ``header`` (normalised keys) that one of ``aliases`` names.

    An exact match (in the order of ``aliases``) wins; otherwise the first column whose key
    starts with an alias (``"image"`` finds ``"imagefilename"``).
    """
    keys = [normalize_header(a) for a in aliases]
    for key in keys:
        if key in header:
            return key
    for key in keys:
        for column in header:
            if column.startswith(key):
                return column
    return None


@dataclass(frozen=True)
class Sheet:
    """The data rows of one worksheet below its header row.

    Attributes:
        path: the sheet file.
        name: the worksheet name ("" for a CSV file).
        header: normalised column keys in sheet order (blank header cells left out).
        rows: one dict per non-blank data row, normalised column key -> cell value (stripped
            strings, numbers, or None for a blank cell), plus :data:`ROW_KEY` -> row number.
    """

    path: Path
    name: str
    header: tuple[str, ...]
    rows: list[dict[str, Any]]

    def column(self, aliases: Sequence[str]) -> str | None:
        """The key of the column one of ``aliases`` names (see :func:`match_column`), or None."""
        return match_column(self.header, aliases)

    def where(self, row: dict[str, Any]) -> str:
        """``"<file>, sheet '<name>', row <n>"`` for error messages."""
        sheet = f", sheet '{self.name}'" if self.name else ""
        return f"{self.path}{sheet}, row {row[ROW_KEY]}"


def find_sheet(folder: Path, prefer: Sequence[str] = ()) -> Path | None:
    """The label sheet in ``folder``: a .xlsx/.xlsm/.csv file (Office lock files skipped).

    Args:
        folder: the folder to look in (not recursive).
        prefer: name fragments (compared by :func:`normalize_header`); if several sheets are
            present, the one whose name contains the earliest fragment is taken.

    Returns:
        The sheet, or None if there is none.

    Raises:
        BusmonaiInputError: several sheets and none (or more than one) matches ``prefer``.
    """
    sheets = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in SHEET_SUFFIXES and not p.name.startswith(("~$", "."))
    )
    if len(sheets) <= 1:
        return sheets[0] if sheets else None
    for fragment in prefer:
        hits = [p for p in sheets if normalize_header(fragment) in normalize_header(p.stem)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            sheets = hits
            break
    raise BusmonaiInputError(
        f"{folder}: several label sheets ({', '.join(p.name for p in sheets)}); "
        "keep only the dataset's own sheet in this folder"
    )


def _cell(value: Any) -> Any:
    """A cell value with strings stripped and blanks as None."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _csv_tables(path: Path) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """The one table of a CSV file (UTF-8 with or without BOM, else Latin-1; ``,`` ``;`` or tab)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = text.splitlines()
    head = [line for line in lines[:HEADER_SEARCH_ROWS] if line.strip()]
    # the delimiter found on most of the leading lines (then most often); a title line has none
    delimiter = max(",;\t", key=lambda d: (sum(d in line for line in head), sum(line.count(d) for line in head)))
    yield "", [tuple(row) for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)]


def _xlsx_tables(path: Path) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """Every worksheet of an .xlsx/.xlsm workbook, cell values only (formulas as last computed)."""
    import openpyxl

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openpyxl warns about unsupported extensions
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # zipfile.BadZipFile, KeyError, InvalidFileException...
        raise BusmonaiInputError(
            f"{path}: cannot be read as an Excel workbook ({exc}); re-download it or save it as .xlsx or .csv"
        ) from exc
    try:
        for sheet in book.worksheets:
            yield sheet.title, [tuple(row) for row in sheet.iter_rows(values_only=True)]
    finally:
        book.close()


def _is_header(cells: list[str], required: Sequence[Sequence[str]]) -> bool:
    """True if the normalised ``cells`` name a column for every alias group of ``required``."""
    present = [c for c in cells if c]
    if not required:
        return len(present) >= 1
    return all(match_column(present, group) is not None for group in required)


def read_sheet(path: Path, required: Sequence[Sequence[str]] = ()) -> Sheet:
    """Read the first worksheet of ``path`` that has a header row naming every required column.

    Args:
        path: a .xlsx/.xlsm or .csv file.
        required: alias groups; the header row must name one alias of each group, e.g.
            ``[("image", "imageid"), ("type", "class")]``. Empty: the first non-blank row.

    Returns:
        The rows below the header, blank rows skipped.

    Raises:
        BusmonaiInputError: the file is missing, of another format, unreadable, or no worksheet
            has such a header row in its first :data:`HEADER_SEARCH_ROWS` rows.
    """
    path = Path(path)
    if not path.is_file():
        raise BusmonaiInputError(f"{path}: label sheet not found; put the dataset's sheet there")
    suffix = path.suffix.lower()
    if suffix not in SHEET_SUFFIXES:
        raise BusmonaiInputError(
            f"{path}: unsupported sheet format '{suffix}'; save it as .xlsx or .csv"
        )
    tables = _csv_tables(path) if suffix == ".csv" else _xlsx_tables(path)
    names: list[str] = []
    for name, table in tables:
        names.append(name)
        for index, raw_header in enumerate(table[:HEADER_SEARCH_ROWS]):
            cells = [normalize_header(_cell(c)) if _cell(c) is not None else "" for c in raw_header]
            if not _is_header(cells, required):
                continue
            header: list[str] = []
            columns: list[tuple[int, str]] = []
            for position, key in enumerate(cells):
                if key and key not in header:
                    header.append(key)
                    columns.append((position, key))
            rows: list[dict[str, Any]] = []
            for number, raw in enumerate(table[index + 1 :], start=index + 2):
                values = {key: _cell(raw[pos]) if pos < len(raw) else None for pos, key in columns}
                if all(v is None for v in values.values()):
                    continue
                values[ROW_KEY] = number
                rows.append(values)
            return Sheet(path=path, name=name, header=tuple(header), rows=rows)
    wanted = " and ".join("/".join(group) for group in required) or "any column"
    where = f" (worksheets: {', '.join(names)})" if any(names) else ""
    raise BusmonaiInputError(
        f"{path}: no header row naming {wanted} in the first {HEADER_SEARCH_ROWS} rows{where}; "
        "add a header row with those column names"
    )
