"""Benchmark of the autoencoder and LDM bundles on real BUSI at 64 px on this machine (issue 3).

The driver of :mod:`busmonai.experiments.benchmark_autoencoder_ldm` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.benchmark_autoencoder_ldm import main

if __name__ == "__main__":
    sys.exit(main())
