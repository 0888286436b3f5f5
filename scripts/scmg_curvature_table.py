"""The SCMG paper's curvature table, reproduced on real BUSI masks at 64 px.

The driver of :mod:`busmonai.experiments.scmg_curvature_table` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.scmg_curvature_table import main

if __name__ == "__main__":
    sys.exit(main())
