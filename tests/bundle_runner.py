"""Run a bundle config in-process from the repository root, as ``python -m monai.bundle run`` does."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

REPO = Path(__file__).resolve().parents[1]

TINY_AUTOENCODER = {"autoencoder_channels": [8, 8, 8], "autoencoder_norm_groups": 4}
TINY_UNET = {"unet_channels": [8, 8, 16], "unet_norm_groups": 4, "unet_num_head_channels": [0, 0, 8]}


def run_bundle(configs: Sequence[str], **overrides: Any) -> ConfigWorkflow:
    """Initialise and run ``configs`` (paths relative to the repo root) with ``overrides``; return
    the workflow so tests can inspect parsed components (``workflow.parser.get_parsed_content``)."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        files = [str(REPO / c) for c in configs]
        workflow = ConfigWorkflow(config_file=files if len(files) > 1 else files[0],
                                  workflow_type=None, **overrides)
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        return workflow
    finally:
        os.chdir(cwd)
