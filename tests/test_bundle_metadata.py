"""Every bundle follows the MONAI bundle layout and carries the metadata the schema asks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if p.is_dir())
REQUIRED = (
    "schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
    "required_packages_version", "task", "description", "authors", "copyright", "data_source",
    "data_type", "network_data_format", "intended_use", "references",
)
TENSOR_KEYS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data")


def test_bundles_exist() -> None:
    assert {"autoencoder", "ldm"} <= {b.name for b in BUNDLES}


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_layout(bundle: Path) -> None:
    for name in ("configs/metadata.json", "configs/train.json", "configs/inference.json", "docs/README.md", "LICENSE"):
        assert (bundle / name).is_file(), f"{bundle.name}: {name} missing"
    assert not list(bundle.rglob("*.py")), "bundles hold configs, not Python copies"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_metadata(bundle: Path) -> None:
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    missing = [key for key in REQUIRED if key not in meta]
    assert not missing, f"{bundle.name}: metadata lacks {missing}"
    assert meta["version"] in meta["changelog"]
    assert meta["required_packages_version"].get("busmonai")
    for direction in ("inputs", "outputs"):
        tensors = meta["network_data_format"][direction]
        assert tensors, f"{bundle.name}: no {direction}"
        for name, spec in tensors.items():
            assert all(key in spec for key in TENSOR_KEYS), f"{bundle.name}: {direction}.{name} incomplete"


CONFIGS = sorted((REPO / "bundles").glob("*/configs/*.json"))
OVERRIDES = ("paper.json", "multi_gpu_train.json", "adaptive_sampler.json", "mask_input.json", "space_to_depth.json",
             "added_synthetic.json", "fixed_schedule.json", "pretrain_synthetic.json",
             "ordinary_augmentation.json", "resunet.json", "attention_unet.json", "unetplusplus.json", "decoder_finetune.json")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_configs_parse_and_macros_resolve(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each config (an override merged after its bundle's train.json) parses, its ``%`` macros
    resolve from the repository root, and every ``a#b`` key it overrides exists in train.json."""
    if config.name == "metadata.json":
        return
    monkeypatch.chdir(REPO)
    files = [config.parent / "train.json", config] if config.name in OVERRIDES else [config]
    parser = ConfigParser(ConfigParser.load_config_files(files))
    parser.resolve_macro_and_relative_ids()
    if config.name in OVERRIDES:
        base = ConfigParser(ConfigParser.load_config_file(config.parent / "train.json"))
        for key in ConfigParser.load_config_file(config):
            if key.startswith("+"):  # MONAI's merge key: extends the list (or dict) train.json has
                assert key[1:] in base, f"{config.name} extends {key[1:]} but train.json has no {key[1:]}"
            elif "#" in key:
                parent = key.rsplit("#", 1)[0]
                assert parent in base, f"{config.name} overrides {key} but train.json has no {parent}"


def test_paper_profile_autoencoder_downsamples_8x(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.chdir(REPO)
    base = REPO / "bundles" / "autoencoder" / "configs"
    parser = ConfigParser(ConfigParser.load_config_files([base / "train.json", base / "paper.json"]))
    network = parser.get_parsed_content("network_def")
    size = parser.get_parsed_content("image_size")
    with torch.no_grad():
        mu, _ = network.encode(torch.zeros(1, 1, 64, 64))
    assert size == 256 and mu.shape[-1] == 64 // 8
