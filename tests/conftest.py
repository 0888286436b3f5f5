"""Shared fixtures: a small phantom dataset and the real BUSI folder (skipped when absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bundle_runner import AE_TRAIN, LDM_TRAIN, TINY_AUTOENCODER, TINY_SCMG, ldm_overrides, run_bundle

# Tiny test networks run fastest on one thread, and CI machines may be shared: two threads per
# process oversubscribe the cores (seen here: 0.02 s vs several seconds per tiny UNet step).
torch.set_num_threads(1)

SHARED_BUSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset_BUSI_with_GT"


@pytest.fixture(autouse=True, scope="session")
def _user_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The user cache (Inception features) of the test session: a temporary folder, never ~/.cache."""
    import os

    os.environ["BUSMONAI_CACHE_DIR"] = str(tmp_path_factory.mktemp("user_cache"))


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own empty working directory, so that defaults relative to the working
    directory (``data/prepared/datalist.json``, ``runs/<stage>/model.pt``) never pick up files a
    user or the README's main command left in the repository."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


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


@pytest.fixture(scope="session")
def datalist32(phantom_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from busmonai.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared32") / "prepared"
    prepare_dataset("busi", phantom_source, out, size=32, progress=False)
    return out / "datalist.json"


@pytest.fixture(scope="session")
def trained_autoencoder(datalist32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ae") / "autoencoder"
    run_bundle([AE_TRAIN], datalist=str(datalist32), output_dir=str(out), image_size=32, max_epochs=2,
               val_interval=1, batch_size=4, **TINY_AUTOENCODER)
    return out


@pytest.fixture(scope="session")
def trained_ldm(datalist32: Path, trained_autoencoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ldm") / "ldm"
    run_bundle([LDM_TRAIN], **ldm_overrides(datalist32, trained_autoencoder, out, max_epochs=1))
    return out


@pytest.fixture(scope="session")
def trained_scmg(datalist32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scmg") / "scmg"
    run_bundle(["bundles/scmg/configs/train.json"], datalist=str(datalist32), output_dir=str(out), image_size=32,
               max_epochs=2, batch_size=4, **TINY_SCMG)
    return out



@pytest.fixture(scope="session")
def trained_segmenter(datalist32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny segmentation run (``output_dir`` with ``model.pt``) on the 32 px phantom."""
    out = tmp_path_factory.mktemp("seg") / "segmentation"
    run_bundle(["bundles/segmentation/configs/train.json"], datalist=str(datalist32), output_dir=str(out),
               image_size=32, seg_channels=[4, 8, 8], batch_size=4, val_batch_size=4, max_epochs=3)
    return out
