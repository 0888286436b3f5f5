"""``scripts/autoencoder_quality.py``: fidelity and realism of autoencoders on one split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from busmonai.experiments import autoencoder_quality


def test_one_row_per_autoencoder_with_psnr_ssim_and_kid(trained_autoencoder: Path, datalist32: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "quality.json"
    model = trained_autoencoder / "model.pt"
    assert autoencoder_quality.main(["--datalist", str(datalist32), "--split", "test", "--image-size", "32",
                                     "--autoencoder", f"a={model}", f"b={model}", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["autoencoder"] for r in rows] == ["a", "b"]
    assert rows[0]["psnr"] == pytest.approx(rows[1]["psnr"]) and 0 < rows[0]["ssim"] <= 1
    assert rows[0]["iterations"] >= 1 and "kid" in rows[0]
    assert "| a |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        autoencoder_quality.main(["--datalist", str(datalist32), "--autoencoder", str(model)])
