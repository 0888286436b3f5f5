"""Bundle runs for tests: tiny network sizes and the package's in-process runner."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from busmonai.bundles import REPO_ROOT, run_config

REPO = REPO_ROOT

TINY_AUTOENCODER = {"autoencoder_channels": [8, 8, 8], "autoencoder_norm_groups": 4}
TINY_SCMG = {"latent_dim": 8, "generator_channels": 8, "type_embed_dim": 4, "spade_hidden": 8, "discriminator_channels": 8}
TINY_UNET = {"unet_channels": [8, 8, 16], "unet_norm_groups": 4, "unet_num_head_channels": [0, 0, 8]}


def vocab_text_encoder(dim: int) -> dict[str, Any]:
    """``text_encoder_arch`` override: the small learned word-level encoder of ``dim`` channels."""
    return {"_target_": "busmonai.networks.text_encoders.VocabTextEncoder", "_mode_": "callable", "dim": dim}


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


def run_torchrun(configs: Sequence[str], overrides: Mapping[str, Any], cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m monai.bundle run`` (gloo on the CPU) from ``cwd``, which is
    not the repository: the bundles run from any working directory."""
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    files = "[" + ",".join(f"'{REPO / c}'" for c in configs) + "]"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:  # a free rendezvous port: tests run side by side under pytest -n 2
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                           "-m", "monai.bundle",
                           "run", "--config_file", files, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def assert_both_ranks_stepped_rank0_wrote(run: subprocess.CompletedProcess, out: Path, cwd: Path) -> None:
    """Both processes logged training iterations; only rank 0 wrote checkpoints and one events file."""
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    iterations = re.findall(r"Epoch: \d+/\d+, Iter: \d+/\d+", log)
    assert iterations, log[-2000:]
    # both processes log the same per-rank iterations: each line exactly twice
    assert all(iterations.count(line) == 2 for line in set(iterations)), sorted(iterations)
    events = list(out.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0, events
    assert all(out in e.parents for e in cwd.rglob("events.out.tfevents.*"))  # none outside output_dir
    assert (out / "model.pt").is_file()
