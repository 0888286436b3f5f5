"""Where does the generator's realism go? KID, adherence and label fidelity per setup.

The driver of :mod:`busmonai.experiments.realism_probe` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.realism_probe import main

if __name__ == "__main__":
    sys.exit(main())
