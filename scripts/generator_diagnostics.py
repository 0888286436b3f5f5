"""How much does the mask steer the generator? Adherence per checkpoint and sampling setting.

The driver of :mod:`busmonai.experiments.generator_diagnostics` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.generator_diagnostics import main

if __name__ == "__main__":
    sys.exit(main())
