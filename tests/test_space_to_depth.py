"""The lossless space-to-depth autoencoder, and the mask-input LDM trained and sampled on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bundle_runner import AE_TRAIN, LDM_TRAIN, TINY_UNET, run_bundle
from busmonai.networks.described import load_network, read_record
from busmonai.networks.io_check import latent_shape
from busmonai.networks.space_to_depth import SpaceToDepth

S2D = "bundles/autoencoder/configs/space_to_depth.json"
MASK_INPUT = "bundles/ldm/configs/mask_input.json"


def test_round_trip_is_exact_and_centred() -> None:
    x = torch.rand(3, 1, 32, 32)
    fold = SpaceToDepth(factor=4)
    z, sigma = fold.encode(x)
    assert z.shape == (3, 16, 8, 8) and fold.latent_channels == 16
    assert torch.equal(sigma, torch.zeros_like(z))
    assert torch.allclose(fold.decode(z), x, atol=1e-6)
    assert z.min() >= -1 and z.max() <= 1  # [0, 1] images become [-1, 1] latents
    # each latent channel is one pixel of each 4 x 4 patch
    assert torch.allclose(z[0, 0], x[0, 0, ::4, ::4] * 2 - 1)
    recon, mu, _ = fold(x)
    assert torch.allclose(recon, x, atol=1e-6) and torch.equal(mu, z)
    assert latent_shape(fold, 64) == (16, 16, 16)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="not a multiple of the fold factor 4"):
        SpaceToDepth(factor=4).encode(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="2D"):
        SpaceToDepth(spatial_dims=3)


def test_bundle_writes_a_self_describing_checkpoint_and_the_ldm_trains_on_it(datalist32: Path, tmp_path: Path) -> None:
    run_bundle([AE_TRAIN, S2D], datalist=str(datalist32), output_dir=str(tmp_path / "ae"), image_size=32)
    ckpt = tmp_path / "ae" / "model.pt"
    record, _ = read_record(ckpt, "autoencoder_ckpt", "autoencoder")
    assert record["parts"]["network"]["_target_"] == "busmonai.networks.space_to_depth.SpaceToDepth"
    fold = load_network(ckpt, "autoencoder_ckpt", "autoencoder")
    assert isinstance(fold, SpaceToDepth) and fold.factor == 4
    assert json.loads((tmp_path / "ae" / "metrics.json").read_text())["latent_shape"] == [16, 8, 8]

    workflow = run_bundle([LDM_TRAIN, MASK_INPUT], datalist=str(datalist32), output_dir=str(tmp_path / "ldm"),
                          autoencoder_ckpt=str(ckpt), image_size=32, batch_size=8, preview_steps=2, max_epochs=1,
                          **TINY_UNET)
    network = workflow.parser.get_parsed_content("network")
    assert network.unet.conv_in.conv.in_channels == 16 + 1  # folded image + mask channel
    assert workflow.parser.get_parsed_content("latent_size") == 8
    assert (tmp_path / "ldm" / "model.pt").is_file()
