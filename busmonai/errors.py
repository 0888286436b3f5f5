"""The one exception type for bad user input.

Every check on files, datalists, configs and command-line values raises
:class:`BusmonaiInputError` with a message that names the offending file or key and says how to
fix it. The CLI turns it into ``error: <message>`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations


class BusmonaiInputError(ValueError):
    """Bad input from the user: a missing or malformed file, a wrong size, an unknown name."""
