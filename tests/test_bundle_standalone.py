"""A bundle folder runs on its own: exported from a run, copied outside the repository, started
from another working directory, with its weights in ``models/`` and no path into the repository."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from busmonai.bundles import export_bundle
from busmonai.cli import main


def _run_inference(bundle: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(bundle / "configs" / "inference.json"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def released(trained_segmenter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported segmentation bundle, moved to a folder outside the repository."""
    exported = tmp_path_factory.mktemp("export") / "bus_tumor_segmentation"
    assert main(["export", "segmentation", "--run", str(trained_segmenter), "--out", str(exported)]) == 0
    moved = tmp_path_factory.mktemp("elsewhere") / "bundle"
    shutil.copytree(exported, moved)
    return moved


def test_export_writes_a_zoo_layout(released: Path) -> None:
    for name in ("configs/inference.json", "configs/train.json", "configs/metadata.json", "docs/README.md", "LICENSE",
                 "models/model.pt", "models/model.ts"):
        assert (released / name).is_file(), name
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(released / "models" / "model.ts"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["name"] == "bus_tumor_segmentation"
    assert "preprocessing" in json.loads(extra["inference.json"])  # MONAI Deploy reads it from the file
    assert not any("%" in line for line in (released / "configs" / "inference.json").read_text().splitlines()
                   if '"%' in line)


def test_copied_bundle_infers_on_any_image_from_another_directory(released: Path, tmp_path: Path) -> None:
    """Grey and RGB images of other sizes in, binary masks of each image's size out, equal to the
    network's own prediction (so no axis is swapped on the way)."""
    from busmonai.networks.described import load_network

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    grey = (rng.random((40, 56)) * 255).astype(np.uint8)
    grey[10:25, 30:50] = 20  # a dark, lesion-like block off the diagonal
    Image.fromarray(grey).save(images / "grey.png")
    Image.fromarray(np.stack([grey.T] * 3, axis=-1)).save(images / "rgb.png")  # 56 x 40, three channels
    run = _run_inference(released, tmp_path, "--input_dir", str(images))
    assert run.returncode == 0, run.stderr[-3000:]
    network = load_network(released / "models" / "model.pt", "ckpt_path", "segmentation").eval()
    for name, source in (("grey", grey), ("rgb", grey.T)):
        mask = np.asarray(Image.open(released / "eval" / f"{name}_mask.png"))
        assert mask.shape == source.shape and set(np.unique(mask)) <= {0, 255}
        image = torch.from_numpy(source.astype(np.float32) / 255.0)[None, None]
        with torch.no_grad():
            logits = network(F.interpolate(image, size=(32, 32), mode="area"))
        pred = logits.argmax(1, keepdim=True).float()
        expected = F.interpolate(pred, size=source.shape, mode="nearest")[0, 0].numpy() * 255
        assert (mask == expected).mean() > 0.99, name


def test_bundle_without_weights_says_so(released: Path, tmp_path: Path) -> None:
    empty = tmp_path / "bundle"
    shutil.copytree(released, empty, ignore=shutil.ignore_patterns("models"))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(images / "a.png")
    run = _run_inference(empty, tmp_path, "--input_dir", str(images))
    assert run.returncode != 0
    assert f"{empty / 'models' / 'model.pt'}: checkpoint not found for 'ckpt_path'" in run.stderr


def test_export_refuses_bad_input(trained_segmenter: Path, trained_autoencoder: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    cases = [
        (["segmentation", "--run", str(trained_autoencoder), "--out", str(tmp_path / "a")],
         "holds a 'autoencoder' checkpoint, not a 'segmentation' one"),
        (["segmentation", "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")], "checkpoint not found"),
        (["segmentation", "--run", str(trained_segmenter), "--out", str(tmp_path / "notes"), "--overwrite"],
         "is not a bundle folder"),
    ]
    for args, text in cases:
        assert main(["export", *args]) == 2
        assert text in capsys.readouterr().err, args
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert export_bundle("segmentation", trained_segmenter, tmp_path / "c")["files"]
    assert export_bundle("segmentation", trained_segmenter, tmp_path / "c", overwrite=True)["files"]
