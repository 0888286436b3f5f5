"""Benchmark of the whole generative chain on real BUSI at 64 px on this machine (issue 4).

The driver of :mod:`busmonai.experiments.benchmark_synthesis` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.benchmark_synthesis import main

if __name__ == "__main__":
    sys.exit(main())
