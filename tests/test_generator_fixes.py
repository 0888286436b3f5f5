"""The generator's training and sampling controls: EMA warm-up, dual (mask / text) guidance,
the ControlNet's conditioning scale, the lesion-weighted loss and high-noise timestep sampling."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import ControlNet, DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from busmonai.engines.diffusion import DiffusionTrainer, lesion_weights, sample_timesteps
from busmonai.engines.ema import ema_model, warmup_decay
from busmonai.networks.latent_diffusion import LatentDiffusionModel
from busmonai.synthesis.sampling import ddim_sample, make_ddim

CTX = 8


def _tiny() -> tuple[LatentDiffusionModel, ControlNet]:
    torch.manual_seed(0)
    kw = dict(spatial_dims=2, in_channels=2, channels=(8, 8), attention_levels=(False, True), num_res_blocks=1,
              num_head_channels=8, norm_num_groups=4, with_conditioning=True, cross_attention_dim=CTX)
    unet = DiffusionModelUNet(out_channels=2, **kw)
    control = ControlNet(conditioning_embedding_in_channels=1, conditioning_embedding_num_channels=(4, 4), **kw)
    for module in (unet, control):  # MONAI zero-initialises output layers: give them weights
        for p in module.parameters():
            if p.abs().max() == 0:
                nn.init.normal_(p, std=0.1)
    return LatentDiffusionModel(unet).eval(), control.eval()


def _sample(**kwargs: object) -> torch.Tensor:
    ldm, control = _tiny()
    noise = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    context = torch.randn(2, 1, CTX, generator=torch.Generator().manual_seed(2))
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:10, 5:12] = 1
    use_control = kwargs.pop("controlnet", True)
    return ddim_sample(ldm, make_ddim(steps=2), noise, context, controlnet=control if use_control else None,
                       control=masks if use_control else None, **kwargs)


def test_ema_warmup_forgets_the_initial_weights() -> None:
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 10_000) == 0.999
    results = {}
    for warmup in (True, False):
        net = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(net.weight)
        ema = ema_model(net, 0.999, warmup=warmup)
        ema.update_parameters(net)  # first update copies the zero start
        with torch.no_grad():
            net.weight.fill_(1.0)
        for _ in range(200):
            ema.update_parameters(net)
        results[warmup] = float(ema.module.weight)
    assert results[True] > 0.8  # the start is forgotten
    assert results[False] < 0.2  # 0.999 ** 200 = 82 % still on the zero start


def test_guidance_one_is_no_guidance() -> None:
    plain = _sample(guidance=1.0, mask_guidance=1.0)
    ldm, control = _tiny()
    # one DDIM run by hand with the full condition only
    scheduler = make_ddim(steps=2)
    latents = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    context = torch.randn(2, 1, CTX, generator=torch.Generator().manual_seed(2))
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:10, 5:12] = 1
    with torch.no_grad():
        for t in scheduler.timesteps:
            ts = torch.full((2,), int(t), dtype=torch.long)
            down, mid = control(x=latents, timesteps=ts, controlnet_cond=masks, context=context)
            eps = ldm(latents, timesteps=ts, context=context, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid)
            latents, _ = scheduler.step(eps, int(t), latents)
    assert torch.allclose(plain, latents, atol=1e-5)


def test_mask_guidance_weight_reaches_the_sampler() -> None:
    text_only_guided = _sample(guidance=3.0, mask_guidance=1.0)
    both = _sample(guidance=3.0, mask_guidance=3.0)
    mask_heavy = _sample(guidance=3.0, mask_guidance=6.0)
    assert not torch.allclose(text_only_guided, both, atol=1e-4)
    assert not torch.allclose(both, mask_heavy, atol=1e-4)
    assert torch.allclose(both, _sample(guidance=3.0), atol=1e-6)  # default: the mask weight follows the text's


def test_conditioning_scale_reaches_the_controlnet() -> None:
    # scale 0: no residual, so mask guidance against the bare UNet is plain text guidance
    assert torch.allclose(_sample(guidance=3.0, conditioning_scale=0.0), _sample(guidance=3.0, controlnet=False),
                          atol=1e-5)
    assert not torch.allclose(_sample(guidance=3.0, conditioning_scale=1.0),
                              _sample(guidance=3.0, conditioning_scale=2.0), atol=1e-4)
    with pytest.raises(ValueError, match="finite"):
        _sample(guidance=float("nan"))


def test_high_noise_timestep_sampling() -> None:
    uniform = sample_timesteps(20_000, 1000, 1.0, torch.Generator().manual_seed(0)).float()
    biased = sample_timesteps(20_000, 1000, 3.0, torch.Generator().manual_seed(0)).float()
    assert abs(uniform.mean() - 499.5) < 10 and abs(biased.mean() - 749.5) < 10
    assert int(biased.min()) >= 0 and int(biased.max()) <= 999


class _Zero(nn.Module):
    """Predicts zero noise, so the loss is the (weighted) mean of noise squared."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) + 0 * self.w


@pytest.mark.parametrize("weight", [0.0, 9.0])
def test_lesion_weighted_loss(weight: float) -> None:
    net = _Zero()
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, :8, :8] = 1  # the top-left latent quarter
    batch = {"latent": torch.zeros(2, 2, 4, 4), "prompt": ["a", "b"], "mask": masks}
    trainer = DiffusionTrainer(device="cpu", max_epochs=1, train_data_loader=[batch], network=net,
                               optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
                               noise_scheduler=DDPMScheduler(num_train_timesteps=10),
                               context_fn=lambda prompts: torch.zeros(len(prompts), 1, CTX), condition_dropout=0.0,
                               min_snr_gamma=0.0, seed=3, lesion_weight=weight)
    trainer.run()
    noise = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    w = lesion_weights(masks, (4, 4), weight)
    assert w[0, 0, 0, 0] == pytest.approx(1 + weight) and w[0, 0, 3, 3] == 1.0
    expected = ((noise ** 2 * w).sum(dim=(1, 2, 3)) / (w.sum(dim=(1, 2, 3)) * 2)).mean()
    assert trainer.state.output["loss"] == pytest.approx(float(expected), rel=1e-5)
