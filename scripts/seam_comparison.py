"""Lesions into real images: latent blending against a pixel paste, at the seam.

The driver of :mod:`busmonai.experiments.seam_comparison` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.seam_comparison import main

if __name__ == "__main__":
    sys.exit(main())
