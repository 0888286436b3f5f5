"""Mean boundary curvature of the real BUSI masks, per class.

The driver of :mod:`busmonai.experiments.curvature_stats` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.curvature_stats import main

if __name__ == "__main__":
    sys.exit(main())
