"""Experiment logic behind the drivers in ``scripts/``: sweeps, diagnostics and their tables, importable and tested like the rest of the library."""
