"""``python -m monai.bundle verify_net_in_out`` passes for all seven bundles.

The downstream bundles are checked on their ``network_def``; the generative ones on their
``verify_net`` (the network with fixed timesteps / context / latent code, see
:mod:`busmonai.networks.io_check`). Stages that build on another stage read it from its checkpoint,
so they are checked with the session's tiny upstream checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bundle_runner import REPO, TINY_UNET


def _verify(bundle: str, net_id: str, **overrides: Any) -> None:
    from monai.bundle import verify_net_in_out

    configs = REPO / "bundles" / bundle / "configs"
    verify_net_in_out(net_id, meta_file=str(configs / "metadata.json"), config_file=str(configs / "train.json"),
                      device="cpu", **overrides)


@pytest.mark.parametrize("bundle", ["segmentation", "classification"])
def test_downstream_network_def(bundle: str) -> None:
    _verify(bundle, "network_def")


def test_autoencoder_and_scmg() -> None:
    _verify("autoencoder", "verify_net")
    _verify("scmg", "verify_net")


def test_ldm_controlnet_lora_from_upstream_checkpoints(trained_autoencoder: Path, trained_ldm: Path) -> None:
    ckpts = {"autoencoder_ckpt": str(trained_autoencoder / "model.pt"), "ldm_ckpt": str(trained_ldm / "model.pt")}
    _verify("ldm", "verify_net", autoencoder_ckpt=ckpts["autoencoder_ckpt"], **TINY_UNET)
    # the ControlNet copies the (tiny) UNet's encoder: its middle residual has the UNet's deepest width
    _verify("controlnet", "verify_net", **ckpts,
            **{"_meta_#network_data_format#outputs#pred#num_channels": TINY_UNET["unet_channels"][-1]})
    _verify("lora", "verify_net", **ckpts)


def test_metadata_would_catch_a_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match="output channel number"):
        _verify("segmentation", "network_def", **{"_meta_#network_data_format#outputs#pred#num_channels": 3})
