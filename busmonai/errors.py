"""The one exception type for bad user input.

Every check on files, datalists, configs and command-line values raises
:class:`BusmonaiInputError` with a message that names the offending file or key and says how to
fix it. The CLI turns it into ``error: <message>`` on stderr and exit code 2, never a traceback;
under ``python -m monai.bundle run`` (and ``torchrun -m monai.bundle``) :func:`install_bundle_run_hook`
does the same for an input error that MONAI's config parser wrapped in its own exceptions.
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


def _wants_traceback() -> bool:
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def input_error_hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    """``sys.excepthook`` for bundle runs: an uncaught exception with a :class:`BusmonaiInputError`
    behind it prints ``error: <message>`` on stderr and exits with 2 (the CLI's contract), instead of
    MONAI's chain of tracebacks around it; any other exception goes to the previous hook."""
    found = None if _wants_traceback() else find_input_error(error)
    if found is None:
        _previous_hook(kind, error, trace)
        return
    sys.stdout.flush()
    print(f"error: {found}\n(the full traceback: set {TRACEBACK_ENV}=1)", file=sys.stderr)
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
