"""How good is an autoencoder for the chain? Reconstruction fidelity and realism, side by side.

The driver of :mod:`busmonai.experiments.autoencoder_quality` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.autoencoder_quality import main

if __name__ == "__main__":
    sys.exit(main())
