"""Bundle runs for tests: tiny network sizes and the package's in-process runner."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from busmonai.bundles import REPO_ROOT, run_config

REPO = REPO_ROOT

TINY_AUTOENCODER = {"autoencoder_channels": [8, 8, 8], "autoencoder_norm_groups": 4}
TINY_SCMG = {"latent_dim": 8, "generator_channels": 8, "type_embed_dim": 4, "spade_hidden": 8, "discriminator_channels": 8}
TINY_UNET = {"unet_channels": [8, 8, 16], "unet_norm_groups": 4, "unet_num_head_channels": [0, 0, 8]}


def run_bundle(configs: Sequence[str], **overrides: Any) -> Any:
    """Initialise and run ``configs`` (paths relative to the repo root) with ``overrides``; return
    the workflow so tests can inspect parsed components (``workflow.parser.get_parsed_content``)."""
    return run_config([REPO / c for c in configs], **overrides)


AE_TRAIN = "bundles/autoencoder/configs/train.json"
LDM_TRAIN = "bundles/ldm/configs/train.json"


def ldm_overrides(datalist: Path, autoencoder: Path, out: Path, **extra: object) -> dict:
    """Overrides for tiny LDM / ControlNet runs on the 32 px phantom datalist."""
    return {"datalist": str(datalist), "output_dir": str(out), "autoencoder_ckpt": str(autoencoder / "model.pt"),
            "image_size": 32, "batch_size": 8, "preview_steps": 2, **TINY_AUTOENCODER, **TINY_UNET, **extra}


def is_input_error(error: BaseException | None, text: str) -> bool:
    """True if ``error`` or an exception it wraps (MONAI wraps config errors in RuntimeError) is
    a BusmonaiInputError whose message contains ``text``."""
    from busmonai.errors import find_input_error

    found = find_input_error(error)
    return found is not None and text in str(found)
