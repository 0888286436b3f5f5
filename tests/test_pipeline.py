"""The stage chain is defined once (``busmonai.pipeline``) and every driver takes it from there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bundle_runner import REPO, TINY_AUTOENCODER, is_input_error
from busmonai.errors import BusmonaiInputError
from busmonai.pipeline import CHECKPOINT_KEYS, STAGES, product_path, synthesis_needs, train_stage, upstream_checkpoints


def test_each_stage_reads_its_upstream_products(tmp_path: Path) -> None:
    assert upstream_checkpoints("autoencoder", tmp_path) == {}
    assert upstream_checkpoints("controlnet", tmp_path) == {
        "autoencoder_ckpt": str(tmp_path / "autoencoder" / "model.pt"), "ldm_ckpt": str(tmp_path / "ldm" / "model.pt")}
    assert product_path(tmp_path, "lora") == tmp_path / "lora" / "adapter.safetensors"
    assert set(CHECKPOINT_KEYS) >= {need for s in STAGES.values() for need in s.needs}
    with pytest.raises(BusmonaiInputError, match="unknown stage 'vae'"):
        product_path(tmp_path, "vae")


def test_synthesis_needs_follow_the_mode_and_the_mask_source() -> None:
    assert synthesis_needs() == ("autoencoder", "ldm", "controlnet")
    assert synthesis_needs(mask_input=True) == ("autoencoder", "ldm")
    assert synthesis_needs("text") == ("autoencoder", "ldm")
    assert synthesis_needs("full", "scmg", mask_input=True) == ("autoencoder", "ldm", "scmg")


def test_train_stage_refuses_a_missing_upstream_product(datalist32: Path, tmp_path: Path) -> None:
    with pytest.raises(BusmonaiInputError, match=r"autoencoder product that ldm needs is missing"):
        train_stage("ldm", tmp_path / "runs", datalist32, minutes=0.1)


def test_train_stage_returns_the_record_of_a_trained_stage(datalist32: Path, tmp_path: Path) -> None:
    record = train_stage("autoencoder", tmp_path / "runs", datalist32,
                         overrides={"image_size": 32, "max_epochs": 1, "batch_size": 8, **TINY_AUTOENCODER})
    assert record["product"] == str(tmp_path / "runs" / "autoencoder" / "model.pt")
    assert Path(record["product"]).is_file() and record["iterations"] >= 1 and record["seconds"] > 0
    assert "val_psnr" in record["validation"]


def test_no_driver_codes_the_chain_or_calls_a_private_method() -> None:
    """The demo, the CLI, the scripts and the experiments take stage products from the pipeline, and call no
    ``obj._private(...)`` of another object."""
    drivers = [REPO / "busmonai" / "demo.py", REPO / "busmonai" / "cli.py", *sorted((REPO / "scripts").glob("*.py")),
               *sorted((REPO / "busmonai" / "experiments").glob("*.py"))]
    for path in drivers:
        text = path.read_text()
        assert not re.search(r'key\.split\("_"\)', text), path
        assert not re.search(r'/ "(autoencoder|ldm|controlnet|scmg)" / "model\.pt"', text), path
        calls = [m for m in re.findall(r"(\w+)\._[a-z]\w*\(", text) if m != "self"]
        assert not calls, f"{path}: private calls on {calls}"


def test_an_unknown_stage_from_the_cli_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(BusmonaiInputError) as err:
        train_stage("vae", tmp_path, tmp_path / "datalist.json")
    assert is_input_error(err.value, "unknown stage")
