"""The one exception type for bad user input.

Every check on files, datalists, configs and command-line values raises
:class:`BusmonaiInputError` with a message that names the offending file or key and says how to
fix it. The CLI turns it into ``error: <message>`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations


class BusmonaiInputError(ValueError):
    """Bad input from the user: a missing or malformed file, a wrong size, an unknown name."""


def find_input_error(error: BaseException | None) -> BusmonaiInputError | None:
    """The :class:`BusmonaiInputError` behind ``error``, if any.

    MONAI's config parser wraps exceptions raised while evaluating a bundle config in
    ``RuntimeError``; the CLI unwraps them to print the user-facing message.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, BusmonaiInputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
