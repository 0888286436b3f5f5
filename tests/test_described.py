"""Self-describing checkpoints: a network's constructor arguments travel with its weights."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from monai.networks.nets import AutoencoderKL

from busmonai.errors import BusmonaiInputError
from busmonai.networks.described import ArchitectureRecord, build, describe, load_network


def _factory() -> functools.partial:
    return functools.partial(AutoencoderKL, spatial_dims=2, in_channels=1, out_channels=1, channels=(4, 4),
                             latent_channels=2, num_res_blocks=1, norm_num_groups=2, attention_levels=(False, False),
                             with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)


def test_record_round_trip(tmp_path: Path) -> None:
    factory = _factory()
    network = build(factory)
    record = ArchitectureRecord("autoencoder", {"image_size": 16}, network=factory)
    torch.save({"model": network.state_dict(), "arch": record.state_dict()}, tmp_path / "model.pt")
    rebuilt = load_network(tmp_path / "model.pt", "autoencoder_ckpt", "autoencoder")
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(rebuilt.eval().encode(x)[0], network.eval().encode(x)[0])  # z_mu: no sampling
    assert describe(factory)["channels"] == [4, 4]  # tuples become lists: plain data in the file


def test_a_checkpoint_cannot_name_arbitrary_code(tmp_path: Path) -> None:
    record = {"format": 1, "stage": "autoencoder", "settings": {},
              "parts": {"network": {"_target_": "os.system", "command": "touch pwned"}}}
    torch.save({"model": {}, "arch": record}, tmp_path / "model.pt")
    with pytest.raises(BusmonaiInputError, match="is not a MONAI or busmonai network"):
        load_network(tmp_path / "model.pt", "autoencoder_ckpt", "autoencoder")
    assert not Path("pwned").exists()


def test_a_built_module_cannot_be_described() -> None:
    with pytest.raises(ValueError, match="_mode_"):
        describe({"unet": torch.nn.Linear(1, 1)})
