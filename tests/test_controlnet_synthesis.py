"""ControlNet bundle and ``busmonai generate`` end to end on phantom data with tiny networks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle_runner import TINY_AUTOENCODER, TINY_UNET, ldm_overrides, run_bundle
from busmonai.bundles import bundle_config, run_config
from busmonai.cli import main
from busmonai.errors import BusmonaiInputError, find_input_error
from busmonai.synthesis.generate import GenerationSettings, generate_dataset

CN_TRAIN = "bundles/controlnet/configs/train.json"
TINY_SETS = [f"{k}={json.dumps(v)}" for k, v in {**TINY_AUTOENCODER, **TINY_UNET}.items()]


@pytest.fixture(scope="module")
def trained_controlnet(datalist32: Path, trained_autoencoder: Path, trained_ldm: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cn") / "controlnet"
    run_bundle([CN_TRAIN], **ldm_overrides(datalist32, trained_autoencoder, out, max_epochs=1,
                                           ldm_ckpt=str(trained_ldm / "model.pt")))
    return out


def _checkpoint_args(autoencoder: Path, ldm: Path, controlnet: Path) -> list[str]:
    args = ["--autoencoder-ckpt", str(autoencoder / "model.pt"), "--ldm-ckpt", str(ldm / "model.pt"),
            "--controlnet-ckpt", str(controlnet / "model.pt"), "--image-size", "32", "--steps", "2"]
    for item in TINY_SETS:
        args += ["--set", item]
    return args


def test_controlnet_trains_from_ldm_weights(trained_controlnet: Path) -> None:
    for name in ("model.pt", "metrics.json", "samples.png", "latents.pt"):
        assert (trained_controlnet / name).is_file(), name
    assert list(trained_controlnet.glob("events.out.tfevents.*"))
    metrics = json.loads((trained_controlnet / "metrics.json").read_text())
    assert metrics["copied_unet_weights"] > 10


def test_generate_writes_labeled_dataset(trained_autoencoder: Path, trained_ldm: Path, trained_controlnet: Path,
                                         datalist32: Path, tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    code = main(["generate", "--out", str(out), "--n", "6", "--batch-size", "4", "--datalist", str(datalist32),
                 *_checkpoint_args(trained_autoencoder, trained_ldm, trained_controlnet)])
    assert code == 0
    datalist = json.loads((out / "datalist.json").read_text())
    items = datalist["training"]
    assert len(items) == 6 and datalist["synthetic"] is True
    assert sum(i["class"] == "benign" for i in items) == 3 and sum(i["class"] == "malignant" for i in items) == 3
    settings = datalist["settings"]
    assert settings["guidance"] == 3.0 and settings["steps"] == 2 and settings["seed"] == 0
    assert set(settings["checkpoints"]) == {"autoencoder", "ldm", "controlnet"}
    for item in items:
        assert item["synthetic"] is True and item["label"] == (item["class"] == "malignant")
        image = np.asarray(Image.open(out / item["image"]))
        mask = np.asarray(Image.open(out / item["mask"]))
        assert image.shape == mask.shape == (32, 32)
        assert set(np.unique(mask)) == {0, 255}
        assert item["class"] in item["prompt"]
    assert (out / "sheet.png").is_file()


def _generation(trained_autoencoder: Path, trained_ldm: Path, trained_controlnet: Path, datalist32: Path, **extra):
    overrides = {"autoencoder_ckpt": str(trained_autoencoder / "model.pt"), "ldm_ckpt": str(trained_ldm / "model.pt"),
                 "controlnet_ckpt": str(trained_controlnet / "model.pt"), "image_size": 32, "steps": 2,
                 "datalist": str(datalist32), "output_dir": "unused", **TINY_AUTOENCODER, **TINY_UNET, **extra}
    workflow = run_config([bundle_config("controlnet", "inference.json")], run=False, **overrides)
    return workflow.parser.get_parsed_content("settings"), workflow.parser.get_parsed_content("models")


def test_killed_and_restarted_generation_gives_same_files(trained_autoencoder: Path, trained_ldm: Path,
                                                          trained_controlnet: Path, datalist32: Path,
                                                          tmp_path: Path) -> None:
    settings, models = _generation(trained_autoencoder, trained_ldm, trained_controlnet, datalist32, n=7, batch_size=2)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    generate_dataset(whole, settings, models, progress=False, sheet=False)
    assert generate_dataset(parts, settings, models, progress=False, sheet=False, stop_after_batches=2) == {}
    assert not (parts / "datalist.json").exists()
    assert len(list((parts / "images").glob("*.png"))) == 4
    generate_dataset(parts, settings, models, progress=False, sheet=False)
    files = sorted(p.relative_to(whole).as_posix() for p in whole.rglob("*.png"))
    assert files == sorted(p.relative_to(parts).as_posix() for p in parts.rglob("*.png"))
    for name in files:
        assert (whole / name).read_bytes() == (parts / name).read_bytes(), name
    assert json.loads((whole / "datalist.json").read_text()) == json.loads((parts / "datalist.json").read_text())


def test_a_run_killed_before_its_plan_restarts_and_a_damaged_plan_is_named(
        trained_autoencoder: Path, trained_ldm: Path, trained_controlnet: Path, datalist32: Path, tmp_path: Path) -> None:
    from busmonai.synthesis.generate import PLAN_NAME

    settings, models = _generation(trained_autoencoder, trained_ldm, trained_controlnet, datalist32, n=3)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    generate_dataset(whole, settings, models, progress=False, sheet=False)
    # a kill after the masks were written and before plan.json: the folder holds only planned masks
    (killed / "masks").mkdir(parents=True)
    for mask in (whole / "masks").glob("*.png"):
        shutil.copy(mask, killed / "masks" / mask.name)
    generate_dataset(killed, settings, models, progress=False, sheet=False)
    assert json.loads((killed / "datalist.json").read_text()) == json.loads((whole / "datalist.json").read_text())
    # a plan damaged outside busmonai (plan.json is written atomically, so never by a kill): named as such
    plan = killed / PLAN_NAME
    plan.write_text(plan.read_text()[:40])
    with pytest.raises(BusmonaiInputError, match="plan.json: not a readable generation plan"):
        generate_dataset(killed, settings, models, progress=False, sheet=False)
    # a masks folder holding a file generate does not name is somebody else's
    other = tmp_path / "other"
    (other / "masks").mkdir(parents=True)
    (other / "masks" / "lesion_of_patient_3.png").write_bytes(b"x")
    with pytest.raises(BusmonaiInputError, match="did not write"):
        generate_dataset(other, settings, models, progress=False, sheet=False)
    assert (other / "masks" / "lesion_of_patient_3.png").read_bytes() == b"x"


def test_ratio_of_datalist_keeps_class_balance(trained_autoencoder: Path, trained_ldm: Path, trained_controlnet: Path,
                                               datalist32: Path, tmp_path: Path) -> None:
    real = json.loads(datalist32.read_text())["training"]
    out = tmp_path / "ratio"
    assert main(["generate", "--out", str(out), "--ratio-of", str(datalist32), "--ratio", "0.5",
                 "--mask-source", "real", *_checkpoint_args(trained_autoencoder, trained_ldm, trained_controlnet)]) == 0
    items = json.loads((out / "datalist.json").read_text())["training"]
    for cls in ("benign", "malignant"):
        assert sum(i["class"] == cls for i in items) == round(0.5 * sum(i["class"] == cls for i in real))
    assert all(i["source"].startswith("masks/") for i in items)  # drawn from real training masks


@pytest.mark.parametrize("mode", ["text", "mask"])
def test_ablation_modes(mode: str, trained_autoencoder: Path, trained_ldm: Path, trained_controlnet: Path,
                        datalist32: Path, tmp_path: Path) -> None:
    settings, models = _generation(trained_autoencoder, trained_ldm, trained_controlnet, datalist32, n=2, mode=mode)
    datalist = generate_dataset(tmp_path / mode, settings, models, progress=False, sheet=False)
    assert datalist["settings"]["mode"] == mode and len(datalist["training"]) == 2


def test_bad_inputs(trained_autoencoder: Path, trained_ldm: Path, trained_controlnet: Path, datalist32: Path,
                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _checkpoint_args(trained_autoencoder, trained_ldm, trained_controlnet)
    # a negative ratio
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--out", str(tmp_path / "a"), "--ratio-of", str(datalist32), "--ratio", "-1", *args])
    assert exit_info.value.code == 2 and "--ratio: -1 is out of range" in capsys.readouterr().err
    # an output folder holding another run's files: refused, nothing overwritten
    first = tmp_path / "run"
    assert main(["generate", "--out", str(first), "--n", "2", *args]) == 0
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    assert main(["generate", "--out", str(first), "--n", "2", "--seed", "5", *args]) == 2
    assert "another generation run" in capsys.readouterr().err
    assert before == {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    # a ControlNet trained against another LDM checkpoint
    other_ldm = tmp_path / "other_ldm"
    shutil.copytree(trained_ldm, other_ldm)
    import torch

    state = torch.load(other_ldm / "model.pt", weights_only=True)
    state["model"]["scale_factor"] = state["model"]["scale_factor"] * 2
    torch.save(state, other_ldm / "model.pt")
    bad = [a if a != str(trained_ldm / "model.pt") else str(other_ldm / "model.pt") for a in args]
    assert main(["generate", "--out", str(tmp_path / "b"), "--n", "2", *bad]) == 2
    assert "trained on the LDM checkpoint" in capsys.readouterr().err
    # a truncated LDM checkpoint is named as unreadable, not reported as a ControlNet / LDM mismatch
    whole = (trained_ldm / "model.pt").read_bytes()
    (other_ldm / "model.pt").write_bytes(whole[: len(whole) // 2])
    assert main(["generate", "--out", str(tmp_path / "c"), "--n", "2", *bad]) == 2
    err = capsys.readouterr().err
    assert f"{other_ldm / 'model.pt'}: not a readable checkpoint for 'ldm_ckpt'" in err and "trained on" not in err


def test_real_masks_must_be_binary_and_of_image_size(trained_autoencoder: Path, trained_ldm: Path,
                                                     trained_controlnet: Path, datalist32: Path, tmp_path: Path) -> None:
    copy = tmp_path / "prepared"
    shutil.copytree(datalist32.parent, copy)
    data = json.loads((copy / "datalist.json").read_text())
    for item in data["training"]:
        if item["class"] in ("benign", "malignant"):
            Image.fromarray(np.full((32, 32), 128, np.uint8)).save(copy / item["mask"])
    for breaker, message in ((lambda p: None, "not binary"),
                             (lambda p: Image.fromarray(np.zeros((20, 20), np.uint8)).save(p), "generation runs at 32 px")):
        for item in data["training"]:
            if item["class"] in ("benign", "malignant"):
                breaker(copy / item["mask"])
        settings = GenerationSettings(n=2, mask_source="real", image_size=32, datalist=str(copy / "datalist.json"))
        with pytest.raises(BusmonaiInputError, match=message):
            from busmonai.synthesis.generate import make_plan

            make_plan(settings)
    assert find_input_error(RuntimeError("x")) is None


def test_generate_with_scmg_masks(trained_autoencoder: Path, trained_ldm: Path, trained_controlnet: Path,
                                  trained_scmg: Path, datalist32: Path, tmp_path: Path) -> None:
    out = tmp_path / "scmg_masks"
    assert main(["generate", "--out", str(out), "--n", "2", "--mask-source", "scmg", "--scmg-ckpt",
                 str(trained_scmg / "model.pt"), *_checkpoint_args(trained_autoencoder, trained_ldm, trained_controlnet)]) == 0
    items = json.loads((out / "datalist.json").read_text())["training"]
    assert [i["source"] for i in items] == ["scmg", "scmg"]
    for item in items:
        assert set(np.unique(np.asarray(Image.open(out / item["mask"])))) <= {0, 255}


def test_generator_diagnostics_script(trained_controlnet: Path, trained_autoencoder: Path, trained_ldm: Path,
                                      trained_segmenter: Path, datalist32: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``scripts/generator_diagnostics.py``: one row per checkpoint x scale x mask guidance, text-only
    and mask-only rows, the shuffled-mask control and KID of the best setting."""
    run = tmp_path / "run"
    run.mkdir()
    for name, folder in (("autoencoder", trained_autoencoder), ("ldm", trained_ldm), ("controlnet", trained_controlnet)):
        (run / name).symlink_to(folder)
    from busmonai.experiments import generator_diagnostics as script

    out = tmp_path / "diag.json"
    assert script.main(["--datalist", str(datalist32), "--split", "test", "--run", str(run), "--segmenter",
                        str(trained_segmenter / "model.pt"), "--image-size", "32", "--steps", "2",
                        "--mask-guidance", "1", "3", "--scales", "1", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    full = [r for r in rows if r.get("mode") == "full"]
    assert len(full) == 2 * 2 * 2  # ema/raw x scales x mask guidance
    assert {r["mode"] for r in rows if "mode" in r} == {"text only", "full", "mask only"}
    assert all(abs(r["effect"] - (r["own"] - r["shuffled"])) < 1e-9 for r in rows)
    assert sum(r["kid"] is not None for r in full) == 1
    assert "| ema | full | 2.0 | 3.0 |" in capsys.readouterr().out
