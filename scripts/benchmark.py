"""Speed and memory of every stage on this machine, cpu profile at 64 px (issue 7).

The driver of :mod:`busmonai.experiments.benchmark` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
