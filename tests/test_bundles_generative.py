"""Autoencoder and LDM bundles end to end on phantom data with tiny networks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bundle_runner import (AE_TRAIN, LDM_TRAIN, TINY_AUTOENCODER, TINY_UNET, assert_both_ranks_stepped_rank0_wrote,
                           is_input_error, ldm_overrides, run_bundle, run_torchrun, vocab_text_encoder)
from busmonai.errors import BusmonaiInputError





def test_autoencoder_trains_and_writes_outputs(trained_autoencoder: Path) -> None:
    out = trained_autoencoder
    for name in ("model.pt", "metrics.json", "reconstructions.png"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*"))
    assert len(list(out.glob("resume_*.pt"))) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and "val_psnr" in metrics["validation"] and "val_ssim" in metrics["validation"]
    assert metrics["best_metric"] == max(metrics["best_metric"], metrics["validation"]["val_psnr"])


def test_autoencoder_resumes_from_saved_iteration(trained_autoencoder: Path, datalist32: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "ae"
    shutil.copytree(trained_autoencoder, out)
    before = json.loads((out / "metrics.json").read_text())["iterations"]
    workflow = run_bundle([AE_TRAIN], datalist=str(datalist32), output_dir=str(out), image_size=32, max_epochs=3,
                          val_interval=1, batch_size=4, **TINY_AUTOENCODER)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.resumed_iteration == before
    assert trainer.state.epoch == 3 and trainer.state.iteration == before * 3 // 2
    assert [p.name for p in out.glob("resume_*.pt")] == ["resume_checkpoint_final=0.pt"]


def test_autoencoder_inference_grid(trained_autoencoder: Path, datalist32: Path, tmp_path: Path) -> None:
    out = tmp_path / "inference"
    run_bundle(["bundles/autoencoder/configs/inference.json"], datalist=str(datalist32), output_dir=str(out),
               autoencoder_ckpt=str(trained_autoencoder / "model.pt"), image_size=32, **TINY_AUTOENCODER)
    result = json.loads((out / "reconstructions.json").read_text())
    assert result["n"] > 0 and result["psnr"] > 0
    assert (out / "reconstructions.png").is_file()


def test_autoencoder_rejects_datalist_of_other_size(datalist32: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        run_bundle([AE_TRAIN], datalist=str(datalist32), output_dir=str(tmp_path / "o"), image_size=64,
                   max_epochs=1, **TINY_AUTOENCODER)
    assert is_input_error(info.value, "'image_size' is 64")


def test_ldm_trains_with_cached_latents(trained_ldm: Path) -> None:
    for name in ("model.pt", "metrics.json", "samples.png", "latents.pt"):
        assert (trained_ldm / name).is_file(), name
    assert list(trained_ldm.glob("events.out.tfevents.*"))
    state = torch.load(trained_ldm / "model.pt", weights_only=True)["model"]
    cache = torch.load(trained_ldm / "latents.pt", weights_only=True)
    assert float(state["scale_factor"]) == pytest.approx(cache["scale_factor"])
    assert cache["scale_factor"] == pytest.approx(1.0 / float(cache["latents"].std()), rel=1e-5)
    # both flips of every training image are cached once
    assert cache["latents"].shape[0] == 2 * (cache["index"].max().item() + 1)


def test_ldm_anneals_its_rate_over_the_end_of_its_budget(datalist32: Path, trained_autoencoder: Path,
                                                         tmp_path: Path) -> None:
    """``lr_anneal_fraction`` reaches the trainer as a :class:`TimeAnnealedLR` on the run's
    scheduler and budget, which lowers the rate the optimizer steps with near the budget's end."""
    from busmonai.engines.handlers import TimeAnnealedLR

    workflow = run_bundle([LDM_TRAIN], **ldm_overrides(datalist32, trained_autoencoder, tmp_path / "ldm", max_epochs=1,
                                                       max_minutes=30, lr_anneal_fraction=0.25))
    handlers = [h for h in workflow.parser.get_parsed_content("train#handlers") if isinstance(h, TimeAnnealedLR)]
    scheduler = workflow.parser.get_parsed_content("lr_scheduler")
    assert len(handlers) == 1 and handlers[0].fraction == 0.25 and handlers[0].max_seconds == 1800
    assert handlers[0].lr_scheduler is scheduler
    assert handlers[0].factor(1800 * 0.875) == pytest.approx(0.5)


def test_ldm_resumes_and_reuses_latent_cache(trained_ldm: Path, datalist32: Path, trained_autoencoder: Path,
                                             tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "ldm"
    shutil.copytree(trained_ldm, out)
    stamp = (out / "latents.pt").stat().st_mtime_ns
    before = json.loads((out / "metrics.json").read_text())["iterations"]
    workflow = run_bundle([LDM_TRAIN], **ldm_overrides(datalist32, trained_autoencoder, out, max_epochs=2))
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.resumed_iteration == before and trainer.state.iteration == 2 * before
    assert (out / "latents.pt").stat().st_mtime_ns == stamp


def test_ldm_with_learned_vocabulary_encoder(datalist32: Path, trained_autoencoder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ldm_vocab"
    run_bundle([LDM_TRAIN], **ldm_overrides(datalist32, trained_autoencoder, out, max_epochs=1,
                                             text_encoder_arch=vocab_text_encoder(16)))
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert any(key.startswith("text_encoder.") for key in checkpoint["model"])
    # the learned encoder is rebuilt from the record: its class and arguments travel with the weights
    assert checkpoint["arch"]["parts"]["text_encoder"]["_target_"] == "busmonai.networks.text_encoders.VocabTextEncoder"
    assert checkpoint["arch"]["parts"]["text_encoder"]["dim"] == 16


def test_ldm_inference_grid_and_empty_prompt_error(trained_ldm: Path, trained_autoencoder: Path, tmp_path: Path) -> None:
    common = {"autoencoder_ckpt": str(trained_autoencoder / "model.pt"), "ldm_ckpt": str(trained_ldm / "model.pt"),
              "image_size": 32, "steps": 2, **TINY_AUTOENCODER, **TINY_UNET}
    out = tmp_path / "inference"
    run_bundle(["bundles/ldm/configs/inference.json"], output_dir=str(out), n_per_prompt=2, **common)
    settings = json.loads((out / "samples.json").read_text())
    assert len(settings["prompts"]) == 8  # benign / malignant x echogenicity x boundary
    assert len(list((out / "samples").glob("*.png"))) == 16
    with pytest.raises(Exception) as info:
        run_bundle(["bundles/ldm/configs/inference.json"], output_dir=str(tmp_path / "x"), prompts=[], **common)
    assert is_input_error(info.value, "empty prompt list")


def test_ldm_builds_the_autoencoder_from_its_checkpoint(datalist32: Path, trained_autoencoder: Path,
                                                         tmp_path: Path) -> None:
    """The LDM config holds no autoencoder sizes: a wider autoencoder checkpoint just works."""
    wide = tmp_path / "wide_ae"
    run_bundle([AE_TRAIN], datalist=str(datalist32), output_dir=str(wide), image_size=32, max_epochs=1,
               batch_size=4, autoencoder_channels=[8, 16, 16], autoencoder_norm_groups=4, latent_channels=3)
    out = tmp_path / "ldm"
    workflow = run_bundle([LDM_TRAIN], **ldm_overrides(datalist32, wide, out, max_epochs=1))
    assert workflow.parser.get_parsed_content("latent_channels") == 3
    assert torch.load(out / "latents.pt", weights_only=True)["latents"].shape[1] == 3


@pytest.mark.parametrize("fault", ["other stage", "no record", "wrong weights"])
def test_ldm_rejects_a_bad_autoencoder_checkpoint(fault: str, datalist32: Path, trained_autoencoder: Path,
                                                  trained_ldm: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(trained_autoencoder / "model.pt", weights_only=True)
    bad = tmp_path / "model.pt"
    if fault == "other stage":
        bad = trained_ldm / "model.pt"
        expected = "holds a 'ldm' checkpoint, not a 'autoencoder' one"
    elif fault == "no record":
        torch.save(checkpoint["model"], bad)
        expected = "has no architecture record"
    else:
        checkpoint["arch"]["parts"]["network"]["channels"] = [16, 16, 16]
        torch.save(checkpoint, bad)
        expected = "checkpoint does not fit"
    overrides = ldm_overrides(datalist32, trained_autoencoder, tmp_path / "o", max_epochs=1)
    overrides["autoencoder_ckpt"] = str(bad)
    with pytest.raises(Exception) as info:
        run_bundle([LDM_TRAIN], **overrides)
    assert is_input_error(info.value, expected), info.value


def test_ldm_multi_gpu_config_on_cpu_with_gloo(datalist32: Path, trained_autoencoder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    overrides = ldm_overrides(datalist32, trained_autoencoder, out, max_epochs=1, batch_size=4)
    run = run_torchrun([LDM_TRAIN, "bundles/ldm/configs/multi_gpu_train.json"], overrides, tmp_path)
    assert_both_ranks_stepped_rank0_wrote(run, out, tmp_path)


def test_autoencoder_adversarial_term_switches_on_after_warmup(datalist32: Path, tmp_path: Path) -> None:
    out = tmp_path / "ae_gan"
    run_bundle([AE_TRAIN], datalist=str(datalist32), output_dir=str(out), image_size=32, max_epochs=2, val_interval=1,
               batch_size=4, adv_weight=0.01, adv_warmup_epochs=1, discriminator_def={
                   "_target_": "monai.networks.nets.PatchDiscriminator", "spatial_dims": 2, "num_layers_d": 2,
                   "channels": 8, "in_channels": 1, "out_channels": 1, "norm": "INSTANCE"}, **TINY_AUTOENCODER)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["d_loss"] > 0 and metrics["adv_loss"] > 0  # epoch 2 is past the warm-up
    state = torch.load(out / "resume_checkpoint_final=0.pt", weights_only=True)
    assert "discriminator" in state and "d_optimizer" in state


AE_DECODER_FINETUNE = "bundles/autoencoder/configs/decoder_finetune.json"
TINY_DISCRIMINATOR = {"_target_": "monai.networks.nets.PatchDiscriminator", "spatial_dims": 2, "num_layers_d": 2,
                      "channels": 8, "in_channels": 1, "out_channels": 1, "norm": "INSTANCE"}


def test_decoder_finetuning_keeps_the_encoder_and_saves_the_last_decoder(trained_autoencoder: Path, datalist32: Path,
                                                                         tmp_path: Path) -> None:
    """The latent space stays valid: every encoder weight is unchanged, the decoder learned, and
    ``model.pt`` holds the last weights (an adversarial fine-tune lowers PSNR, so the best-PSNR
    choice would undo it)."""
    from busmonai.engines.checkpoints import AtomicCheckpointSaver

    out = tmp_path / "ae_ft"
    workflow = run_bundle([AE_TRAIN, AE_DECODER_FINETUNE], datalist=str(datalist32), output_dir=str(out), image_size=32,
               max_epochs=2, val_interval=1, batch_size=4, lr=1e-2, init_ckpt=str(trained_autoencoder / "model.pt"),
               adv_weight=0.05, discriminator_def=TINY_DISCRIMINATOR, **TINY_AUTOENCODER)
    before = torch.load(trained_autoencoder / "model.pt", weights_only=True)["model"]
    after = torch.load(out / "model.pt", weights_only=True)["model"]
    final = torch.load(out / "resume_checkpoint_final=0.pt", weights_only=True)["network"]
    assert set(before) == set(after)
    encoder = [k for k in before if not k.startswith(("decoder.", "post_quant_conv."))]
    decoder = [k for k in before if k.startswith("decoder.")]
    assert encoder and decoder
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert not all(torch.equal(before[k], after[k]) for k in decoder)
    assert all(torch.equal(after[k], final[k]) for k in after)  # the last weights, not the best-PSNR ones
    # and not by chance: no best-PSNR copy is written (the last epoch may also be the best one)
    savers = [h for h in workflow.parser.get_parsed_content("validate#handlers") if isinstance(h, AtomicCheckpointSaver)]
    assert savers and all(saver._key_metric_checkpoint is None for saver in savers)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["adv_loss"] > 0 and metrics["d_loss"] > 0  # no warm-up: on from the first step


def test_decoder_finetuning_needs_a_trained_autoencoder(datalist32: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        run_bundle([AE_TRAIN, AE_DECODER_FINETUNE], datalist=str(datalist32), output_dir=str(tmp_path / "f"),
                   image_size=32, max_epochs=1, init_ckpt=str(tmp_path / "missing.pt"), **TINY_AUTOENCODER)
    assert is_input_error(info.value, "--init_ckpt runs/autoencoder/model.pt")


def test_perceptual_loss_needs_local_weights(datalist32: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        run_bundle([AE_TRAIN], datalist=str(datalist32), output_dir=str(tmp_path / "p"), image_size=32, max_epochs=1,
                   perceptual_weight=0.1, **TINY_AUTOENCODER)
    assert is_input_error(info.value, "perceptual_weights")


def test_multichannel_images_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    from busmonai.data.dataset import LoadPNGd

    path = tmp_path / "rgb.png"
    Image.new("RGB", (32, 32)).save(path)
    with pytest.raises(BusmonaiInputError, match="3-channel image"):
        LoadPNGd(keys="image", image_size=32)({"image": str(path)})


def test_fresh_start_drops_stale_resume_checkpoints(trained_autoencoder: Path, datalist32: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "ae"
    shutil.copytree(trained_autoencoder, out)
    (out / "resume_checkpoint_final=0.pt").rename(out / "resume_checkpoint_epoch=9.pt")  # an older, longer run
    workflow = run_bundle([AE_TRAIN], datalist=str(datalist32), output_dir=str(out), image_size=32, max_epochs=1,
                          val_interval=1, batch_size=4, resume=False, **TINY_AUTOENCODER)
    assert workflow.parser.get_parsed_content("train#trainer").state.epoch == 1
    assert [p.name for p in out.glob("resume_*.pt")] == ["resume_checkpoint_final=0.pt"]


def test_ldm_with_the_mask_as_input_generates_without_a_controlnet(datalist32: Path, trained_autoencoder: Path,
                                                                   tmp_path: Path) -> None:
    """The segmentation-guided baseline: the mask is a UNet input channel from the first step; the
    checkpoint says so, and generation needs no ControlNet."""
    from busmonai.cli import main
    from busmonai.networks.described import load_network
    from busmonai.synthesis.sampling import ddim_sample, make_ddim

    out = tmp_path / "ldm_mask"
    run_bundle([LDM_TRAIN, "bundles/ldm/configs/mask_input.json"],
               **ldm_overrides(datalist32, trained_autoencoder, out, max_epochs=1))
    ldm = load_network(out / "model.pt", "ldm_ckpt", "ldm").eval()
    assert ldm.mask_channels == 1 and ldm.unet.in_channels == ldm.unet.out_channels + 1
    torch.nn.init.normal_(ldm.unet.conv_in.conv.weight, std=1.0)  # make the mask channel matter after 2 steps
    noise = torch.randn(2, ldm.unet.out_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.zeros(2, 1, 384)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 8:24] = 1
    with_mask = ddim_sample(ldm, make_ddim(steps=2), noise, context, guidance=1.0, control=mask)
    without = ddim_sample(ldm, make_ddim(steps=2), noise, context, guidance=1.0)
    assert not torch.allclose(with_mask, without, atol=1e-4)
    args = ["generate", "--out", str(tmp_path / "syn"), "--n", "2", "--steps", "2", "--image-size", "32",
            "--datalist", str(datalist32), "--autoencoder-ckpt", str(trained_autoencoder / "model.pt"),
            "--ldm-ckpt", str(out / "model.pt"), "--mask-guidance", "2.0"]
    assert main(args) == 0
    assert len(json.loads((tmp_path / "syn" / "datalist.json").read_text())["training"]) == 2
