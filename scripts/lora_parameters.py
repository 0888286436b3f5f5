"""Trainable parameters of LoRA (r = 2, 4, 8) next to full fine-tuning of the LDM UNet (issue 8).

The driver of :mod:`busmonai.experiments.lora_parameters` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.lora_parameters import main

if __name__ == "__main__":
    sys.exit(main())
