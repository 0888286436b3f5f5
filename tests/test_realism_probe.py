"""``scripts/realism_probe.py``: KID, adherence and label fidelity per autoencoder x LDM x sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle_runner import LDM_TRAIN, ldm_overrides, run_bundle
from busmonai.errors import BusmonaiInputError
from busmonai.experiments.realism_probe import main, parse_row


def test_rows_parse_and_bad_rows_name_the_fix() -> None:
    setup = parse_row("low=ae.pt,ldm.pt,guidance=1,mask_guidance=3,steps=20")
    assert (setup.name, str(setup.autoencoder), str(setup.ldm)) == ("low", "ae.pt", "ldm.pt")
    assert setup.sampling == {"guidance": 1.0, "mask_guidance": 3.0, "steps": 20}
    for bad, message in (("ae.pt,ldm.pt", "expected NAME="), ("x=ae.pt", "expected NAME="),
                         ("x=ae.pt,ldm.pt,eta=1", "key of guidance"), ("x=ae.pt,ldm.pt,steps=many", "needs a number")):
        with pytest.raises(BusmonaiInputError, match=message):
            parse_row(bad)


def test_probe_generates_each_setup_and_measures_it(datalist32: Path, trained_autoencoder: Path,
                                                    trained_segmenter: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ldm = tmp_path / "ldm_mask"
    run_bundle([LDM_TRAIN, "bundles/ldm/configs/mask_input.json"],
               **ldm_overrides(datalist32, trained_autoencoder, ldm, max_epochs=1))
    classifier = tmp_path / "cls"
    run_bundle(["bundles/classification/configs/train.json"], datalist=str(datalist32), output_dir=str(classifier),
               image_size=32, network_name="test_efficientnet", batch_size=4, val_batch_size=4, max_epochs=1)
    ae = trained_autoencoder / "model.pt"
    common = ["--datalist", str(datalist32), "--segmenter", str(trained_segmenter / "model.pt"), "--classifier",
              str(classifier / "model.pt"), "--n", "4", "--image-size", "32", "--out", str(tmp_path / "probe")]
    out = tmp_path / "probe.json"
    assert main([*common, "--row", f"default={ae},{ldm / 'model.pt'},steps=2",
                 "--row", f"unguided={ae},{ldm / 'model.pt'},steps=2,guidance=1,mask_guidance=1",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["default", "unguided"]
    assert rows[1]["sampling"] == {"steps": 2, "guidance": 1.0, "mask_guidance": 1.0}
    for row in rows:
        assert row["n"] == 4 and row["kid_std"] >= 0 and 0 <= row["adherence"] <= 1 and 0 <= row["label_auc"] <= 1
        items = json.loads((tmp_path / "probe" / row["name"] / "datalist.json").read_text())["training"]
        assert len(items) == 4 and {i["source"] for i in items} == {"ellipse"}
    images = [(tmp_path / "probe" / name / "images").glob("*.png") for name in ("default", "unguided")]
    first, second = (sorted(p.read_bytes() for p in found) for found in images)
    assert first != second  # the guidance reached the sampler
    assert "| default |" in capsys.readouterr().out
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "probe").rglob("*.png")}
    assert main([*common, "--row", f"default={ae},{ldm / 'model.pt'},steps=2"]) == 0  # measured again, not redrawn
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "probe").rglob("*.png")}
    assert main([*common, "--row", f"default={ae},{ldm / 'model.pt'},steps=3"]) == 2
    assert "generated with other steps than row 'default'" in capsys.readouterr().out
    assert main([*common, "--row", f"a={ae},{tmp_path / 'missing.pt'}"]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().out
    assert main([*common, "--row", f"a={ae},{ldm / 'model.pt'}", "--row", f"a={ae},{ldm / 'model.pt'}"]) == 2
