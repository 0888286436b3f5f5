"""The MONAI Deploy App SDK application (apps/bus_segmentation_deploy) on a real exported bundle.

Nothing is mocked: a tiny segmentation model is trained with the bundle's train.json on a phantom
dataset, the bundle is assembled in a temporary folder and exported to TorchScript with the
documented ``ckpt_export`` command (docs/monai_deploy.md), and the app runs in a subprocess.

Needs the deploy venv (``pip install -e ".[deploy,test]"``, see docs/monai_deploy.md); the main venv
has no ``monai.deploy`` and skips this module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "monai.deploy", reason="monai-deploy-app-sdk not installed; use the deploy venv (docs/monai_deploy.md)"
)

from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "apps" / "bus_segmentation_deploy" / "app.py"
BUNDLE = REPO / "bundles" / "segmentation"
EPOCHS = 60
TIMEOUT = 300


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=env.get("CUDA_VISIBLE_DEVICES", ""))
    return env


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def export_cmd(bundle: Path, filepath: Path, config: Path | None = None) -> list[str]:
    """The export command of docs/monai_deploy.md."""
    return [
        sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
        "--filepath", str(filepath),
        "--ckpt_file", str(bundle / "models" / "model.pt"),
        "--key_in_ckpt", "model",
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--config_file", str(config or bundle / "configs" / "inference.json"),
        "--bundle_root", str(bundle),
    ]


def app_cmd(inp: Path, out: Path, model: Path) -> list[str]:
    return [sys.executable, str(APP), "-i", str(inp), "-o", str(out), "-m", str(model)]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Phantom data, a tiny trained model, the bundle copy with models/model.pt and model.ts."""
    from busmonai.data.phantom import write_phantom_dataset
    from busmonai.data.prepare import prepare_dataset

    work = tmp_path_factory.mktemp("deploy")
    raw = work / "raw"
    write_phantom_dataset(raw, n=12, seed=0, height=120, width=160, progress=False)
    prepare_dataset("busi", raw, work / "prep", size=64, progress=False)
    _run([
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(BUNDLE / "configs" / "train.json"),
        "--datalist", str(work / "prep" / "datalist.json"),
        "--output_dir", str(work / "runs" / "seg"),
        "--max_epochs", str(EPOCHS), "--seg_channels", "[8,16,32]",
    ], cwd=work)

    bundle = work / "bus_tumor_segmentation"
    shutil.copytree(BUNDLE, bundle)
    (bundle / "models").mkdir()
    shutil.copy(work / "runs" / "seg" / "model.pt", bundle / "models" / "model.pt")
    # run from another folder: the command must not depend on the working directory
    _run(export_cmd(bundle, bundle / "models" / "model.ts"), cwd=work / "prep")

    benign = sorted(p for p in (raw / "benign").glob("*.png") if not p.stem.endswith("_mask"))[0]
    image, mask = Image.open(benign), Image.open(benign.with_name(f"{benign.stem}_mask.png"))
    inputs = work / "inputs"
    inputs.mkdir()
    side = min(image.size)
    image.convert("L").crop((0, 0, side, side)).save(inputs / "square.png")
    mask.convert("L").crop((0, 0, side, side)).save(work / "square_truth.png")
    image.convert("RGB").save(inputs / "wide_rgb.png")
    mask.convert("L").save(work / "wide_rgb_truth.png")
    return {"work": work, "bundle": bundle, "model": bundle / "models" / "model.ts", "inputs": inputs}


def test_export_embeds_metadata_and_inference_config(deployed: dict[str, Path]) -> None:
    import zipfile

    with zipfile.ZipFile(deployed["model"]) as archive:
        extra = {Path(n).name: n for n in archive.namelist() if "/extra/" in n}
        assert {"metadata.json", "inference.json"} <= set(extra)
        meta = json.loads(archive.read(extra["metadata.json"]))
    assert list(meta["network_data_format"]["inputs"]) == ["image"]
    assert list(meta["network_data_format"]["outputs"]) == ["pred"]


def _check_mask(mask_path: Path, source: Path, truth: Path) -> np.ndarray:
    assert mask_path.is_file(), f"{mask_path} not written"
    mask = Image.open(mask_path)
    assert mask.size == Image.open(source).size
    values = np.asarray(mask)
    assert values.ndim == 2 and set(np.unique(values)) <= {0, 255}
    pred, true = values > 0, np.asarray(Image.open(truth)) > 0
    assert true.any()
    dice = 2 * (pred & true).sum() / (pred.sum() + true.sum())
    assert (pred & true).sum() > 0 and dice > 0.1, f"{mask_path}: Dice {dice:.3f} with the phantom lesion"
    return values


def test_app_square_single_file(deployed: dict[str, Path], tmp_path: Path) -> None:
    src = deployed["inputs"] / "square.png"
    out = tmp_path / "out"
    _run(app_cmd(src, out, deployed["model"]), cwd=tmp_path)
    _check_mask(out / "square_mask.png", src, deployed["work"] / "square_truth.png")
    assert sorted(p.name for p in out.iterdir()) == ["square_mask.png"]


def test_app_folder_nonsquare_rgb_matches_bundle(deployed: dict[str, Path], tmp_path: Path) -> None:
    """A folder input (both images); the app's masks equal the bundle's own inference.json output."""
    out = tmp_path / "out"
    _run(app_cmd(deployed["inputs"], out, deployed["model"]), cwd=tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["square_mask.png", "wide_rgb_mask.png"]
    app_masks = {
        name: _check_mask(out / f"{name}_mask.png", deployed["inputs"] / f"{name}.png",
                          deployed["work"] / f"{name}_truth.png")
        for name in ("square", "wide_rgb")
    }
    ref = tmp_path / "bundle_out"
    _run([
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(deployed["bundle"] / "configs" / "inference.json"),
        "--bundle_root", str(deployed["bundle"]),
        "--input_dir", str(deployed["inputs"]), "--output_dir", str(ref),
    ], cwd=tmp_path)
    for name, values in app_masks.items():
        np.testing.assert_array_equal(values, np.asarray(Image.open(ref / f"{name}_mask.png")))


def test_app_rejects_non_image_input(deployed: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image\n")
    proc = _run(app_cmd(bad, tmp_path / "out", deployed["model"]), cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "not a readable image" in proc.stderr and "notes.png" in proc.stderr
    assert not (tmp_path / "out" / "notes_mask.png").exists()


def test_app_rejects_model_without_inference_config(deployed: dict[str, Path], tmp_path: Path) -> None:
    """A TorchScript exported with another config (as the old README did) is refused before the graph runs."""
    bundle = deployed["bundle"]
    other = tmp_path / "evaluation.json"
    shutil.copy(bundle / "configs" / "inference.json", other)
    model = tmp_path / "model.ts"
    _run(export_cmd(bundle, model, config=other), cwd=tmp_path)
    proc = _run(app_cmd(deployed["inputs"] / "square.png", tmp_path / "out", model), cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "no 'inference.json'" in proc.stderr and "ckpt_export" in proc.stderr
