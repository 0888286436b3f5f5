"""Cross-domain adaptation experiment: base vs full fine-tune vs LoRA r = 2, 4, 8 (issue 8).

The driver of :mod:`busmonai.experiments.lora_experiment` (its docstring has the details and the usage).
"""

from __future__ import annotations

import sys

from busmonai.experiments.lora_experiment import main

if __name__ == "__main__":
    sys.exit(main())
