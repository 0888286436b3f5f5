"""``busmonai masks`` and ``scripts/curvature_stats.py`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busmonai.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("label", ["benign", "malignant"])
def test_ellipse_masks_follow_class_rule(label: str, tmp_path: Path) -> None:
    out = tmp_path / "masks"
    assert main(["masks", "--method", "ellipse", "--label", label, "--n", "16", "--size", "64", "--out", str(out)]) == 0
    files = sorted(out.glob(f"{label}_*.png"))
    assert len(files) == 16
    index = json.loads((out / "masks.json").read_text())
    assert index["label"] == label and len(index["masks"]) == 16
    for path in files:
        mask = np.asarray(Image.open(path))
        assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
        ys, xs = np.nonzero(mask)
        width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        assert (width > height) if label == "benign" else (height > width)
        # inside the image with a background margin
        assert mask[0].max() == 0 and mask[-1].max() == 0 and mask[:, 0].max() == 0 and mask[:, -1].max() == 0
    assert (out / "sheet.png").is_file()


def test_masks_respect_bbox_and_seed(tmp_path: Path) -> None:
    args = ["masks", "--label", "benign", "--n", "4", "--size", "64", "--bbox", "10,20,50,40"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    for path in sorted((tmp_path / "a").glob("benign_*.png")):
        mask = np.asarray(Image.open(path)) > 0
        assert not mask[:20].any() and not mask[40:].any() and not mask[:, :10].any() and not mask[:, 50:].any()
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()


def test_masks_fit_to_datalist(phantom_source: Path, tmp_path: Path) -> None:
    assert main(["prepare", "busi", "--root", str(phantom_source), "--out", str(tmp_path / "p"), "--size", "64"]) == 0
    out = tmp_path / "m"
    assert main(["masks", "--label", "malignant", "--n", "3", "--size", "64", "--out", str(out),
                 "--datalist", str(tmp_path / "p" / "datalist.json")]) == 0
    assert json.loads((out / "masks.json").read_text())["prior"] != {}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bbox", "0,0,0,5"], "zero or negative area"),
        (["--bbox", "10,10,90,20"], "outside"),
        (["--method", "scmg"], "SCMG"),
    ],
)
def test_masks_bad_input(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--n": "2", "--method": "ellipse"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["masks", "--label", "benign", "--size", "64", "--out", str(tmp_path / "o")]
    for flag, value in base.items():
        argv += [flag, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_masks_refuse_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    assert main(["masks", "--label", "benign", "--n", "2", "--out", str(tmp_path / "o")]) == 2
    assert (tmp_path / "o" / "keep.txt").exists()


def test_curvature_stats_script(shared_busi: Path, tmp_path: Path) -> None:
    out = tmp_path / "curv.json"
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "curvature_stats.py"), str(shared_busi),
                          "--json", str(out)], capture_output=True, text=True, check=True)
    stats = json.loads(out.read_text())
    assert stats["malignant"]["mean"] > stats["benign"]["mean"]
    assert stats["benign"]["n"] == 350 and stats["malignant"]["n"] == 168
    assert "malignant" in run.stdout


def test_curvature_stats_script_bad_folder(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "curvature_stats.py"), str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and str(tmp_path) in run.stderr
