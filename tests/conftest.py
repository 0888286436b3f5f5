"""Shared fixtures: a small phantom dataset and the real BUSI folder (skipped when absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SHARED_BUSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset_BUSI_with_GT"


@pytest.fixture(scope="session")
def phantom_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-image phantom dataset in BUSI layout, written once per session (do not modify)."""
    from busmonai.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantom") / "Dataset_BUSI_with_GT"
    write_phantom_dataset(root, n=12, seed=0, height=64, width=80, progress=False)
    return root


@pytest.fixture()
def phantom_copy(phantom_source: Path, tmp_path: Path) -> Path:
    """A private copy of the phantom dataset that a test may break."""
    root = tmp_path / "raw"
    shutil.copytree(phantom_source, root)
    return root


@pytest.fixture(scope="session")
def shared_busi() -> Path:
    """The real BUSI images beside the project, or skip."""
    if not SHARED_BUSI.is_dir():
        pytest.skip(f"real BUSI data not found at {SHARED_BUSI}")
    return SHARED_BUSI
