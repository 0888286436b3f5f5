"""Checkpoint reading for engines and bundle configs; the code lives in :mod:`busmonai.checkpoint_io`."""

from __future__ import annotations

from busmonai.checkpoint_io import fit_state_dict, load_weights, read_checkpoint

__all__ = ["fit_state_dict", "load_weights", "read_checkpoint"]
