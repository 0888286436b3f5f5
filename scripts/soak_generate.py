"""Soak test of ``busmonai generate``: does its memory stay flat over a long run?

The driver of :mod:`busmonai.experiments.soak_generate` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.soak_generate import main

if __name__ == "__main__":
    sys.exit(main())
