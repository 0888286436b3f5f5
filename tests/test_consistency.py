"""The ControlNet++ segmentation-consistency term: the one-step clean estimate, which samples get the
term, its place in the training loss, and the bundle keys that switch it on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from bundle_runner import LDM_TRAIN, is_input_error, ldm_overrides, run_bundle
from busmonai.engines.consistency import SegmentationConsistency, consistency_term, one_step_clean_estimate
from busmonai.engines.diffusion import DiffusionTrainer
from busmonai.errors import BusmonaiInputError


class _Decoder(nn.Module):
    """A stand-in autoencoder: ``decode`` upsamples 4x4 latents of 2 channels to a 16x16 image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.conv(z), scale_factor=4.0)


def _term(max_timestep: int = 200) -> SegmentationConsistency:
    torch.manual_seed(0)
    return SegmentationConsistency(_Decoder(), nn.Conv2d(1, 2, 3, padding=1), weight=0.5, max_timestep=max_timestep)


def test_one_step_estimate_inverts_the_forward_noising() -> None:
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    clean, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 150, 999])
    noisy = scheduler.add_noise(original_samples=clean, noise=noise, timesteps=t)
    assert torch.allclose(one_step_clean_estimate(noisy, noise, t, scheduler), clean, atol=1e-3)


def test_only_low_noise_samples_with_their_mask_get_the_term() -> None:
    scheduler, term = DDPMScheduler(num_train_timesteps=1000), _term(max_timestep=200)
    noisy = torch.randn(3, 2, 4, 4)
    prediction = torch.randn(3, 2, 4, 4, requires_grad=True)
    masks = torch.zeros(3, 1, 16, 16)
    masks[:, :, 4:12, 4:12] = 1
    value = term(noisy, prediction, torch.tensor([10, 500, 50]), masks, scheduler, 1.0,
                 mask_kept=torch.tensor([True, True, False]))
    value.backward()
    grad = prediction.grad.abs().flatten(1).sum(1)
    assert grad[0] > 0 and grad[1] == 0 and grad[2] == 0  # t >= 200 and a dropped mask: no term
    for p in (*term.autoencoder.parameters(), *term.segmenter.parameters()):
        assert not p.requires_grad  # frozen judges of the loss
    none = term(noisy, prediction, torch.tensor([500, 600, 700]), masks, scheduler, 1.0)
    assert none.detach().item() == 0.0 and none.requires_grad


class _Zero(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) + self.w


def test_the_trainer_adds_the_weighted_term_to_its_loss() -> None:
    net = _Zero()
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, :8, :8] = 1
    batch = {"latent": torch.randn(2, 2, 4, 4), "prompt": ["a", "b"], "mask": masks}
    trainer = DiffusionTrainer(device="cpu", max_epochs=1, train_data_loader=[batch], network=net,
                               optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
                               noise_scheduler=DDPMScheduler(num_train_timesteps=10),
                               context_fn=lambda prompts: torch.zeros(len(prompts), 1, 8), condition_dropout=0.0,
                               min_snr_gamma=0.0, seed=3, consistency=_term())
    trainer.run()
    out = trainer.state.output
    assert out["consistency"] > 0
    assert out["loss"] == pytest.approx(out["mse"] + 0.5 * out["consistency"], rel=1e-5)
    assert net.w.grad is not None and net.w.grad != 0  # the term's gradient reaches the denoiser


def test_a_weight_needs_a_segmenter_checkpoint() -> None:
    assert consistency_term(_Decoder(), None, 0.0) is None
    with pytest.raises(BusmonaiInputError, match="consistency_segmenter_ckpt"):
        consistency_term(_Decoder(), None, 0.1)
    with pytest.raises(BusmonaiInputError, match="consistency_weight -1"):
        consistency_term(_Decoder(), "seg.pt", -1.0)


def test_the_mask_input_ldm_trains_with_the_term(datalist32: Path, trained_autoencoder: Path,
                                                 trained_segmenter: Path, tmp_path: Path) -> None:
    """The bundle keys reach the trainer: the segmenter is rebuilt from its checkpoint and the
    iteration output carries the term."""
    out = tmp_path / "ldm_consistency"
    workflow = run_bundle([LDM_TRAIN, "bundles/ldm/configs/mask_input.json"],
                          **ldm_overrides(datalist32, trained_autoencoder, out, max_epochs=1, consistency_weight=0.2,
                                          consistency_max_timestep=1000,
                                          consistency_segmenter_ckpt=str(trained_segmenter / "model.pt")))
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.consistency is not None and trainer.consistency.weight == 0.2
    assert "consistency" in trainer.state.output
    with pytest.raises(Exception) as err:
        run_bundle([LDM_TRAIN, "bundles/ldm/configs/mask_input.json"],
                   **ldm_overrides(datalist32, trained_autoencoder, tmp_path / "bad", max_epochs=1, consistency_weight=0.2))
    assert is_input_error(err.value, "consistency_segmenter_ckpt")
