"""Real:synthetic ratio sweep of the downstream bundles: do synthetic images help diagnosis models?

The driver of :mod:`busmonai.experiments.downstream_sweep` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.downstream_sweep import main

if __name__ == "__main__":
    sys.exit(main())
