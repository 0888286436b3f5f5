"""busmonai: clinically controllable synthetic breast-ultrasound images as MONAI Bundles."""

from __future__ import annotations

__version__ = "0.1.0"

from busmonai.errors import install_bundle_run_hook

install_bundle_run_hook()  # under ``python -m monai.bundle run``: input errors as one line, exit 2
