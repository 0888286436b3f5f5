"""``busmonai demo``: the whole pipeline on phantom data, and honest reports when a step fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import busmonai.demo as demo
from busmonai.cli import main


def test_demo_half_a_minute_writes_report(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "DEMO_STEPS", 4)  # every step still runs; 4 DDIM steps instead of 20 keep the test short
    out = tmp_path / "demo"
    assert main(["demo", "--minutes", "0.5", "--out", str(out)]) == 0
    printed = capfd.readouterr()  # file-descriptor level: MONAI's loggers keep the stdout of import time
    lines = printed.out.strip().splitlines()
    assert "report.md" in lines[-1]
    assert "[demo] ldm: ok" in printed.out and "Epoch" not in printed.out + printed.err  # bars, not logs
    assert any(line.startswith("ldm: ") and "it/s" in line for line in printed.err.splitlines())
    assert (out / "runs" / "ldm" / "train.log").is_file() and (out / "control_sheet.png").is_file()
    report = json.loads((out / "report.json").read_text())
    statuses = {name: record["status"] for name, record in report["steps"].items()}
    assert set(statuses.values()) == {"ok"}, statuses
    steps = report["steps"]
    assert steps["synthesis"]["n"] >= 16
    assert 0 <= steps["fid_kid"]["fid"] and steps["fid_kid"]["n_fake"] == steps["synthesis"]["n"]
    assert 0 <= steps["adherence"]["dice_mean"] <= 1 and 0 <= steps["fidelity"]["auc"] <= 1
    text = (out / "report.md").read_text()
    assert "KID (primary)" in text and "mask adherence" in text
    for name in steps["figures"]["files"].values():
        assert Path(name).is_file()


def test_failed_stage_is_reported_and_claims_no_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(stage: str, *args: object) -> dict:
        raise RuntimeError(f"{stage} exploded")

    monkeypatch.setattr(demo, "_train", broken)
    report = demo.run_demo(tmp_path / "demo", minutes=1, progress=False)
    steps = report["steps"]
    assert steps["data"]["status"] == "ok"
    assert steps["autoencoder"]["status"] == "failed" and "exploded" in steps["autoencoder"]["error"]
    assert steps["ldm"]["status"] == "skipped" and steps["fid_kid"]["status"] == "skipped"
    text = (tmp_path / "demo" / "report.md").read_text()
    assert "KID" not in text and "No quality metric was computed" in text
    assert "autoencoder | failed" in text


def test_demo_rejects_bad_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--minutes", "0", "--out", str(tmp_path / "d")])
    assert info.value.code == 2 and "--minutes: 0 is out of range" in capsys.readouterr().err
    from busmonai.demo import run_demo
    from busmonai.errors import BusmonaiInputError

    with pytest.raises(BusmonaiInputError, match="--minutes nan"):
        run_demo(tmp_path / "d", minutes=float("nan"))
