"""The one exception type for bad user input.

Every check on files, datalists, configs and command-line values raises
:class:`BusmonaiInputError` with a message that names the offending file or key and says how to
fix it. The CLI turns it into ``error: <message>`` on stderr and exit code 2, never a traceback;
under ``python -m monai.bundle run`` (and ``torchrun -m monai.bundle``) :func:`install_bundle_run_hook`
does the same for an input error, or a file-system error, that MONAI's config parser wrapped in its
own exceptions.
"""

from __future__ import annotations

import logging
import os
import sys
from types import TracebackType
from typing import TypeVar

TRACEBACK_ENV = "BUSMONAI_TRACEBACK"
"""Set this environment variable (to anything but ``""`` or ``0``) to see the full traceback of an input error."""


class BusmonaiInputError(ValueError):
    """Bad input from the user: a missing or malformed file, a wrong size, an unknown name."""


E = TypeVar("E", bound=BaseException)


def find_error(error: BaseException | None, kind: type[E]) -> E | None:
    """The first exception of type ``kind`` in ``error``'s chain (itself, its cause, its context...).

    MONAI's config parser wraps exceptions raised while evaluating a bundle config in
    ``RuntimeError``; the CLI unwraps them to print the user-facing message.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def find_input_error(error: BaseException | None) -> BusmonaiInputError | None:
    """The :class:`BusmonaiInputError` behind ``error``, if any (:func:`find_error`)."""
    return find_error(error, BusmonaiInputError)


def os_error_message(error: OSError, output: object = None) -> str:
    """``PATH: reason; fix`` for a file-system error; PATH is the file the system named, else
    ``output`` (a command's output folder: a write that fails on a full disk often names no file)."""
    where = f"{error.filename}: " if error.filename else (f"{output} (the output): " if output else "")
    return f"{where}{error.strerror or error}; check that the path exists and is writable and that the disk has space"


def _wants_traceback() -> bool:
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def input_error_hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    """``sys.excepthook`` for bundle runs: an uncaught exception with a :class:`BusmonaiInputError`
    or an ``OSError`` (a full or read-only disk, a missing folder) behind it prints
    ``error: <message>`` on stderr and exits with 2 (the CLI's contract), instead of MONAI's chain
    of tracebacks around it; any other exception goes to the previous hook."""
    found: BaseException | None = None
    if not _wants_traceback():
        found = find_input_error(error) or find_error(error, OSError)
    if found is None:
        _previous_hook(kind, error, trace)
        return
    message = str(found) if isinstance(found, BusmonaiInputError) else os_error_message(found)  # type: ignore[arg-type]
    sys.stdout.flush()
    print(f"error: {message}\n(the full traceback: set {TRACEBACK_ENV}=1)", file=sys.stderr)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(2)  # an excepthook cannot set the exit status otherwise; files are flushed above


_previous_hook = sys.excepthook


def _run_by_monai_bundle() -> bool:
    """True when this process is ``python -m monai.bundle ...`` (directly or under torchrun)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name in ("monai.bundle.__main__", "monai.bundle")


def install_bundle_run_hook() -> bool:
    """Install :func:`input_error_hook` as ``sys.excepthook`` when the process is a
    ``monai.bundle`` run (every bundle config imports busmonai first); library callers, MONAI Label
    and MONAI Deploy keep their own hook. Returns whether it was installed."""
    global _previous_hook
    if not _run_by_monai_bundle() or sys.excepthook is input_error_hook:
        return False
    _previous_hook = sys.excepthook
    sys.excepthook = input_error_hook
    return True
