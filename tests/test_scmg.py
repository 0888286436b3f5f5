"""SCMG mask generator: networks, losses, the bundle end to end on phantom masks, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bundle_runner import TINY_SCMG, is_input_error, run_bundle
from busmonai.clinical.bbox import bboxes_to_maps, mask_bbox
from busmonai.cli import main
from busmonai.engines.scmg import SCMGTrainer, rectangle_adherence_loss
from busmonai.networks.scmg import sample_bboxes
from busmonai.errors import BusmonaiInputError
from busmonai.networks.scmg import SCMGDiscriminator, SCMGGenerator, tumor_type_index

TRAIN = "bundles/scmg/configs/train.json"
INFERENCE = "bundles/scmg/configs/inference.json"
SIZE = 32
TINY = TINY_SCMG


def _tiny_generator() -> SCMGGenerator:
    torch.manual_seed(0)
    return SCMGGenerator(latent_dim=8, base_channels=8, image_size=SIZE, type_embed_dim=4, spade_hidden=8)


def _maps(n: int = 2) -> torch.Tensor:
    boxes = torch.tensor([[4, 6, 20, 18], [10, 2, 30, 26]] * (n // 2))
    return bboxes_to_maps(boxes, SIZE, SIZE)


@pytest.fixture(scope="module")
def trained(trained_scmg: Path) -> Path:
    return trained_scmg


def test_generator_shapes_range_and_type_conditioning() -> None:
    generator = _tiny_generator().eval()
    z = torch.randn(2, 8)
    maps = _maps()
    with torch.no_grad():
        benign = generator(z, torch.tensor([0, 0]), maps)
        malignant = generator(z, torch.tensor([1, 1]), maps)
    assert benign.shape == (2, 1, SIZE, SIZE)
    assert float(benign.min()) >= 0.0 and float(benign.max()) <= 1.0
    assert not torch.allclose(benign, malignant), "the tumor type must change the output"
    adv, types = SCMGDiscriminator(base_channels=8, image_size=SIZE)(benign, maps)
    assert adv.shape == (2,) and types.shape == (2, 2)


def test_curvature_loss_alone_backpropagates_to_generator(trained: Path) -> None:
    generator = SCMGGenerator.from_state_dict(torch.load(trained / "model.pt", weights_only=True))
    targets = generator.curvature_targets
    assert targets.shape == (2,) and bool((targets > 0).all()), "curvature targets are stored in model.pt"
    trainer = SCMGTrainer("cpu", 1, [], generator, SCMGDiscriminator(base_channels=8, image_size=SIZE),
                          torch.optim.Adam(generator.parameters()), torch.optim.Adam(generator.parameters()))
    # a mask whose boundary sits well above 0.5 in a box (the curvature needs a region > 0.5)
    types = torch.tensor([0, 1])
    fake = generator(torch.randn(2, 8), types, _maps())
    fake = 0.5 * fake + 0.5 * _maps() * 0.9
    cur_loss = trainer.generator_losses(fake, _maps(), types)["cur_loss"]
    generator.zero_grad()
    cur_loss.backward()
    grads = [p.grad.abs().sum() for p in generator.parameters() if p.grad is not None]
    assert grads and float(sum(grads)) > 0


def test_rectangle_loss_is_zero_for_a_mask_equal_to_its_box() -> None:
    maps = _maps()
    assert torch.allclose(rectangle_adherence_loss(maps, maps), torch.zeros(2))
    assert bool((rectangle_adherence_loss(torch.ones_like(maps), maps) > 0).all())
    assert bool((rectangle_adherence_loss(torch.zeros_like(maps), maps) > 0).all())


def test_drawn_masks_are_one_region_without_holes() -> None:
    """A soft ring and a far speck become one filled disc: the largest component, holes filled;
    clipped to a rectangle, only what the rectangle keeps."""
    from busmonai.networks.scmg import binarize_masks

    yy, xx = np.mgrid[:SIZE, :SIZE]
    radius = np.hypot(yy - 16, xx - 16)
    soft = ((radius > 4) & (radius < 9)).astype(np.float32)
    soft[1, 30] = 1.0
    disc = binarize_masks(torch.from_numpy(soft)[None, None])[0]
    assert disc[16, 16] and not disc[1, 30]
    assert disc.sum() == int((radius < 9).sum())
    clipped = binarize_masks(torch.from_numpy(soft)[None, None], torch.tensor([[0, 0, 16, 32]]), clip_to_bbox=True)[0]
    assert not clipped[:, 16:].any()
    assert clipped.sum() == int(((radius > 4) & (radius < 9) & (xx < 16)).sum())  # an open half ring stays open


def test_bad_inputs_give_clear_errors() -> None:
    generator = _tiny_generator()
    with pytest.raises(BusmonaiInputError, match="'benign', 'malignant'"):
        tumor_type_index("borderline")
    with pytest.raises(BusmonaiInputError, match="unknown tumor type index 2"):
        generator(torch.randn(2, 8), torch.tensor([0, 2]), _maps())
    empty = torch.zeros(2, 1, SIZE, SIZE)
    with pytest.raises(BusmonaiInputError, match="zero area or outside"):
        generator(torch.randn(2, 8), torch.tensor([0, 1]), empty)


def test_bundle_trains_and_writes_outputs(trained: Path) -> None:
    for name in ("model.pt", "metrics.json", "samples.png"):
        assert (trained / name).is_file(), name
    assert list(trained.glob("events.out.tfevents.*"))
    assert [p.name for p in trained.glob("resume_*.pt")] == ["resume_checkpoint_epoch=2.pt"]
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and {"g_loss", "d_loss", "cur_loss", "rect_loss"} <= set(metrics)
    sheet = np.asarray(Image.open(trained / "samples.png"))
    assert 128 in sheet, "rectangles are outlined in grey 128"
    generator = SCMGGenerator.from_state_dict(torch.load(trained / "model.pt", weights_only=True))
    boxes = sample_bboxes(generator.box_bank, torch.tensor([0, 1] * 8), SIZE, torch.Generator().manual_seed(0))
    assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
    assert int(boxes.min()) >= 0 and int(boxes.max()) <= SIZE
    with torch.no_grad():
        soft = generator(torch.randn(16, 8), torch.tensor([0, 1] * 8), bboxes_to_maps(boxes, SIZE, SIZE))
    binary = (soft > 0.5).float()
    assert float(soft.min()) >= 0 and float(soft.max()) <= 1
    assert set(torch.unique(binary).tolist()) <= {0.0, 1.0}


def test_bundle_resumes(trained: Path, datalist32: Path, tmp_path: Path) -> None:
    out = tmp_path / "scmg"
    shutil.copytree(trained, out)
    before = json.loads((out / "metrics.json").read_text())["iterations"]
    workflow = run_bundle([TRAIN], datalist=str(datalist32), output_dir=str(out), image_size=SIZE, max_epochs=3,
                          batch_size=4, **TINY)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.resumed_iteration == before
    assert trainer.state.epoch == 3 and trainer.state.iteration == before * 3 // 2


def test_bundle_inference_writes_masks(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "inference"
    run_bundle([INFERENCE], output_dir=str(out), scmg_ckpt=str(trained / "model.pt"), image_size=SIZE,
               n_per_type=3)
    for label in ("benign", "malignant"):
        files = sorted((out / label).glob(f"{label}_*.png"))
        assert len(files) == 3
        index = json.loads((out / label / "masks.json").read_text())
        assert index["method"] == "scmg" and all("requested_bbox" in m for m in index["masks"])


def test_cli_scmg_masks_inside_rectangle(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "masks"
    args = ["masks", "--method", "scmg", "--label", "malignant", "--n", "4", "--size", "64", "--bbox", "10,20,50,44",
            "--checkpoint", str(trained / "model.pt"), "--out", str(out)]
    assert main(args) == 0
    files = sorted(out.glob("malignant_*.png"))
    assert len(files) == 4
    for path in files:
        mask = np.asarray(Image.open(path))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
        x0, y0, x1, y1 = mask_bbox(mask)
        assert x0 >= 10 and y0 >= 20 and x1 <= 50 and y1 <= 44


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bbox", "0,0,0,5"], "zero or negative area"),
        (["--bbox", "10,10,90,20"], "outside"),
    ],
)
def test_cli_scmg_bad_rectangles(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 extra: list[str], message: str) -> None:
    args = ["masks", "--method", "scmg", "--label", "benign", "--n", "1", "--size", "64",
            "--checkpoint", str(trained / "model.pt"), "--out", str(tmp_path / "m"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_cli_scmg_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "model.pt"
    args = ["masks", "--method", "scmg", "--label", "benign", "--n", "1", "--checkpoint", str(missing),
            "--out", str(tmp_path / "m")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "bundles/scmg" in err


def test_inference_unknown_tumor_type(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        run_bundle([INFERENCE], output_dir=str(tmp_path / "x"), scmg_ckpt=str(trained / "model.pt"),
                   image_size=SIZE, labels=["borderline"], n_per_type=1)
    assert is_input_error(info.value, "unknown tumor type 'borderline'")


def test_mode_seeking_loss_rewards_masks_that_follow_their_noise() -> None:
    from busmonai.engines.scmg import mode_seeking_loss

    z, z_other = torch.zeros(4, 8), torch.ones(4, 8)
    same = torch.full((4, 1, 8, 8), 0.5)
    apart = torch.zeros(4, 1, 8, 8)
    apart[:, :, :, :4] = 1.0  # mean |difference| 0.5 against the same noise distance 1
    assert float(mode_seeking_loss(same, same, z, z_other)) > 1e4  # one mask for two noises: heavily penalised
    assert float(mode_seeking_loss(same + 0.5 * (apart - 0.5).sign(), same, z, z_other)) == pytest.approx(2.0, rel=1e-3)
    fake = same.clone().requires_grad_(True)
    mode_seeking_loss(fake, apart, z, z_other).backward()
    assert fake.grad is not None and float(fake.grad.abs().sum()) > 0


def test_bundle_trains_with_the_mode_seeking_term(datalist32: Path, tmp_path: Path) -> None:
    out = tmp_path / "scmg_ms"
    run_bundle([TRAIN], datalist=str(datalist32), output_dir=str(out), image_size=SIZE, max_epochs=1, batch_size=4,
               mode_seeking_weight=1.0, **TINY)
    logged = (out / "metrics.json").read_text()
    assert "ms_loss" in json.loads(logged) and json.loads(logged)["ms_loss"] > 0
    with pytest.raises(Exception) as error:
        run_bundle([TRAIN], datalist=str(datalist32), output_dir=str(tmp_path / "bad"), image_size=SIZE, max_epochs=1,
                   batch_size=4, mode_seeking_weight=-1.0, **TINY)
    assert is_input_error(error.value, "mode_seeking_weight must be >= 0")


def test_bundle_draws_with_the_generator_ema(datalist32: Path, tmp_path: Path) -> None:
    """With ``g_ema_decay`` the saved generator is the moving average (kept in the resume
    checkpoint too), not the last weights; ``busmonai masks`` draws with it."""
    out = tmp_path / "scmg_ema"
    run_bundle([TRAIN], datalist=str(datalist32), output_dir=str(out), image_size=SIZE, max_epochs=2, batch_size=4,
               g_ema_decay=0.9, **TINY)
    saved = torch.load(out / "model.pt", weights_only=True)
    resume = torch.load(next(out.glob("resume_checkpoint_epoch=*.pt")), weights_only=True)
    live, ema = resume["generator"], resume["generator_ema"]
    averaged = {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
    assert set(saved) == set(live) == set(averaged)
    floats = [k for k in saved if saved[k].is_floating_point() and "running" not in k]
    assert all(torch.equal(saved[k], averaged[k]) for k in saved)
    assert not all(torch.allclose(saved[k], live[k]) for k in floats)
    assert torch.equal(saved["curvature_targets"], live["curvature_targets"])  # the priors, not an average
    masks = tmp_path / "drawn"
    assert main(["masks", "--method", "scmg", "--checkpoint", str(out / "model.pt"), "--label", "benign", "--n", "2",
                 "--size", str(SIZE), "--out", str(masks)]) == 0
    assert len(list(masks.glob("benign_*.png"))) == 2
