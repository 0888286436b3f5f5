"""Train SCMG recipe variants and measure how real their masks look, one table.

The driver of :mod:`busmonai.experiments.scmg_realism_experiment` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.scmg_realism_experiment import main

if __name__ == "__main__":
    sys.exit(main())
