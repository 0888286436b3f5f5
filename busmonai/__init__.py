"""busmonai: clinically controllable synthetic breast-ultrasound images as MONAI Bundles."""

from __future__ import annotations

__version__ = "0.1.0"
