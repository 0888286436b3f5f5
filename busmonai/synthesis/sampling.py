"""DDIM sampling with classifier-free guidance, optionally steered by a ControlNet mask.

One loop serves the text-only LDM, the ControlNet (text + mask) and the mask-only ablation
(docs/method.md section 2). Guidance follows MONAI's ``DiffusionInferer.sample``: the unconditional
branch's context is filled with -1 and ``eps = eps_u + w (eps_c - eps_u)``. The ControlNet takes
the mask at image size through its own conditioning embedding (docs/design.md: MONAI's
``ControlNetLatentDiffusionInferer`` resizes the mask to the latent size first, which breaks a
multi-stage conditioning embedding). With a ControlNet the unconditional branch is the bare
UNet, and mask and text have separate guidance weights (:func:`ddim_sample`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.schedulers import DDIMScheduler
from torch import nn
from tqdm import tqdm

from busmonai.clinical.classes import TUMOR_CLASSES
from busmonai.networks.latent_diffusion import UNCONDITIONAL_FILL


def make_ddim(train_scheduler: nn.Module | None = None, num_train_timesteps: int = 1000, steps: int = 50,
              schedule: str = "scaled_linear_beta", beta_start: float = 0.0015, beta_end: float = 0.0195,
              ) -> DDIMScheduler:
    """A DDIM scheduler with ``steps`` inference steps matching the training noise schedule."""
    if train_scheduler is not None:
        num_train_timesteps = int(train_scheduler.num_train_timesteps)
    scheduler = DDIMScheduler(num_train_timesteps=num_train_timesteps, schedule=schedule,
                              beta_start=beta_start, beta_end=beta_end, clip_sample=False)
    if train_scheduler is not None:  # identical betas, whatever schedule the trainer used
        scheduler.betas = train_scheduler.betas.clone()
        scheduler.alphas = train_scheduler.alphas.clone()
        scheduler.alphas_cumprod = train_scheduler.alphas_cumprod.clone()
        scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]
    scheduler.set_timesteps(steps)
    return scheduler


def _residuals(controlnet: nn.Module, x: torch.Tensor, timesteps: torch.Tensor, control: torch.Tensor,
               context: torch.Tensor | None, scale: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    down, mid = controlnet(x=x, timesteps=timesteps, controlnet_cond=control, conditioning_scale=scale,
                           context=context)
    return list(down), mid


def _with_zero_residuals(down: list[torch.Tensor], mid: torch.Tensor, zero_rows: int) -> dict[str, Any]:
    """Residuals for a batch whose first ``zero_rows`` samples are the bare UNet (no mask)."""
    pad = lambda r: torch.cat([torch.zeros_like(r[:1]).expand(zero_rows, *r.shape[1:]), r])  # noqa: E731
    return {"down_block_additional_residuals": [pad(r) for r in down], "mid_block_additional_residual": pad(mid)}


@dataclass
class LatentInpainting:
    """Synthesise only inside a region and keep a real image elsewhere (RePaint without resampling).

    RePaint (Lugmayr et al., "RePaint: Inpainting using Denoising Diffusion Probabilistic
    Models", CVPR 2022) replaces, after every denoising step, the known part of the sample by the
    known image noised to the same step, so the generated part is denoised in the context of the
    real one; its resampling (jumping back in time) is left out. Here it works on latents: the real
    image's latent is the known part, the (dilated) lesion region at latent size the unknown part.

    Attributes:
        known: ``(B, C, h, w)`` scaled latents of the real images.
        region: ``(B, 1, h, w)`` 1 where new content is synthesised, 0 where the real latent stays.
        noise: ``(B, C, h, w)`` the noise the known latents are noised with (seeded).
    """

    known: torch.Tensor
    region: torch.Tensor
    noise: torch.Tensor

    def blend(self, latents: torch.Tensor, scheduler: DDIMScheduler, timestep: int | None) -> torch.Tensor:
        """``region * latents + (1 - region) * known_t``, ``known_t`` the known latents noised to
        ``timestep`` (the clean known latents for None: after the last step)."""
        known = self.known
        if timestep is not None:
            t = torch.full((known.shape[0],), int(timestep), device=known.device, dtype=torch.long)
            known = scheduler.add_noise(original_samples=known, noise=self.noise, timesteps=t)
        return self.region * latents + (1.0 - self.region) * known


def ddim_sample(
    ldm: nn.Module,
    scheduler: DDIMScheduler,
    noise: torch.Tensor,
    context: torch.Tensor | None,
    guidance: float = 3.0,
    controlnet: nn.Module | None = None,
    control: torch.Tensor | None = None,
    conditioning_scale: float = 1.0,
    mask_guidance: float | None = None,
    progress: bool = False,
    inpaint: LatentInpainting | None = None,
) -> torch.Tensor:
    """Denoise ``noise`` (B, C, h, w) into scaled latents.

    Text only: ``eps = eps(0) + w (eps(c) - eps(0))``, ``0`` the prompt-free context (-1 fill).
    With a ControlNet the unconditional branch is the bare UNet (no mask, no prompt) and mask and
    text get their own weights, as InstructPix2Pix guides image and text:

    ``eps = eps(0, 0) + w_m (eps(m, 0) - eps(0, 0)) + w_t (eps(m, c) - eps(m, 0))``

    With ``w_m == w_t == w`` this is ordinary guidance towards ``eps(m, c)`` (two passes); with
    both 1 it is ``eps(m, c)`` alone (one pass). A mask-input LDM (``mask_channels`` 1) is guided
    the same way with ``control`` and no ControlNet: its "no mask" is the fill channel.

    Args:
        ldm: a :class:`busmonai.networks.latent_diffusion.LatentDiffusionModel`.
        scheduler: DDIM scheduler with its timesteps set.
        noise: the initial latents (draw them from a seeded generator for reproducibility).
        context: (B, L, D) text embeddings, or None.
        guidance: text guidance weight ``w_t``; 1 (or no context) disables the text contrast.
        controlnet: a MONAI ``ControlNet`` or None.
        control: (B, 1, H, W) masks at image size, for the ControlNet or a mask-input LDM.
        conditioning_scale: multiplier of the ControlNet residuals.
        mask_guidance: mask guidance weight ``w_m`` (None: the same as ``guidance``).
        progress: show a progress bar over the steps.
        inpaint: keep real latents outside a region (:class:`LatentInpainting`), or None.

    Returns:
        Latents in the diffusion model's scale (divide by ``ldm.scale_factor`` to decode).
    """
    w_t = float(guidance)
    w_m = w_t if mask_guidance is None else float(mask_guidance)
    for name, value in (("guidance", w_t), ("mask_guidance", w_m), ("conditioning_scale", conditioning_scale)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    if controlnet is not None and control is None:
        raise ValueError("a ControlNet needs its masks (control)")
    mask_input = bool(getattr(ldm, "mask_channels", 0)) and control is not None and controlnet is None
    uncond = torch.full_like(context, UNCONDITIONAL_FILL) if context is not None else None
    if mask_input:
        m_fill, m_real = ldm.mask_input(None, noise), ldm.mask_input(control.to(noise), noise)
        branches = 1 if context is None or (w_t == 1.0 and w_m == 1.0) else (2 if w_m == w_t else 3)
    elif controlnet is None:
        branches = 2 if (context is not None and w_t != 1.0) else 1
    elif context is None or (w_t == 1.0 and w_m == 1.0):
        branches = 1
    else:
        branches = 2 if w_m == w_t else 3
    steps = [int(t) for t in scheduler.timesteps]
    latents = noise if inpaint is None else inpaint.blend(noise, scheduler, steps[0])
    for i, t in enumerate(tqdm(steps, desc="DDIM", disable=not progress, leave=False)):
        x = torch.cat([latents] * branches)
        timesteps = torch.full((x.shape[0],), int(t), device=noise.device, dtype=torch.long)
        if mask_input:  # the mask is an input channel of the UNet itself
            if branches == 1:
                eps_out = ldm(x, timesteps=timesteps, context=context, mask=m_real)
            elif branches == 2:
                e_none, e_full = ldm(x, timesteps=timesteps, context=torch.cat([uncond, context]),
                                     mask=torch.cat([m_fill, m_real])).chunk(2)
                eps_out = e_none + w_t * (e_full - e_none)
            else:
                e_none, e_mask, e_full = ldm(x, timesteps=timesteps, context=torch.cat([uncond, uncond, context]),
                                             mask=torch.cat([m_fill, m_real, m_real])).chunk(3)
                eps_out = e_none + w_m * (e_mask - e_none) + w_t * (e_full - e_mask)
        elif controlnet is None:
            ctx = torch.cat([uncond, context]) if branches == 2 else context
            eps = ldm(x, timesteps=timesteps, context=ctx).chunk(branches)
            eps_out = eps[0] + w_t * (eps[1] - eps[0]) if branches == 2 else eps[0]
        elif branches == 1:
            down, mid = _residuals(controlnet, x, timesteps, control, context, conditioning_scale)
            eps_out = ldm(x, timesteps=timesteps, context=context, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid)
        elif branches == 2:  # bare UNet (no mask, no prompt) and mask + prompt
            down, mid = _residuals(controlnet, latents, timesteps[: len(latents)], control, context,
                                   conditioning_scale)
            e_none, e_full = ldm(x, timesteps=timesteps, context=torch.cat([uncond, context]),
                                 **_with_zero_residuals(down, mid, len(latents))).chunk(2)
            eps_out = e_none + w_t * (e_full - e_none)
        else:  # bare UNet, mask without prompt, mask + prompt
            n = len(latents)
            down, mid = _residuals(controlnet, torch.cat([latents, latents]), timesteps[: 2 * n],
                                   torch.cat([control, control]), torch.cat([uncond, context]), conditioning_scale)
            e_none, e_mask, e_full = ldm(x, timesteps=timesteps, context=torch.cat([uncond, uncond, context]),
                                         **_with_zero_residuals(down, mid, n)).chunk(3)
            eps_out = e_none + w_m * (e_mask - e_none) + w_t * (e_full - e_mask)
        latents, _ = scheduler.step(eps_out, int(t), latents)
        if inpaint is not None:
            latents = inpaint.blend(latents, scheduler, steps[i + 1] if i + 1 < len(steps) else None)
    return latents


@torch.no_grad()
def decode(autoencoder: nn.Module, latents: torch.Tensor, scale_factor: float | torch.Tensor) -> torch.Tensor:
    """Decode scaled latents to images in [0, 1]."""
    return autoencoder.decode(latents / scale_factor).clamp(0.0, 1.0)


def seeded_noise(shape: Sequence[int], seeds: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Initial latents, one independent generator per sample: sample k depends only on seeds[k],
    so a batch split differently (or resumed) gives the same images."""
    per_sample = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(per_sample).to(device)


def encode_context(ldm: nn.Module, text_encoder: nn.Module | None, prompts: Sequence[str],
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Text context of ``prompts`` from the encoder trained with ``ldm`` (its own learned encoder
    if it has one, else the given frozen encoder)."""
    from busmonai.networks.text_encoders import check_prompts

    prompts = check_prompts(prompts)
    encoder = getattr(ldm, "text_encoder", None) or text_encoder
    if encoder is None:
        raise ValueError("no text encoder: pass the frozen encoder the model was trained with")
    with torch.no_grad():
        return encoder.encode(prompts).to(device)


@torch.no_grad()
def sample_images(ldm: nn.Module, autoencoder: nn.Module, text_encoder: nn.Module | None, prompts: Sequence[str],
                  latent_shape: Sequence[int], seeds: Sequence[int], steps: int = 50, guidance: float = 3.0,
                  noise_scheduler: nn.Module | None = None, controlnet: nn.Module | None = None,
                  masks: torch.Tensor | None = None, device: torch.device | str = "cpu",
                  progress: bool = False, conditioning_scale: float = 1.0,
                  mask_guidance: float | None = None) -> torch.Tensor:
    """Sample one image per prompt (B = len(prompts)) in [0, 1], shape (B, 1, H, W).

    Args:
        ldm: the latent diffusion model (EMA weights).
        autoencoder: the frozen autoencoder.
        text_encoder: the frozen text encoder (ignored if ``ldm`` carries a learned one).
        prompts: one prompt per image ("" for the mask-only ablation).
        latent_shape: (C, h, w) of a latent.
        seeds: one seed per image (see :func:`seeded_noise`).
        steps: DDIM steps.
        guidance: classifier-free guidance scale.
        noise_scheduler: the training scheduler (its betas are reused).
        controlnet: a ControlNet, with ``masks`` (B, 1, H, W), or None for text only.
        device: where to sample.
        progress: progress bar over the DDIM steps.
        conditioning_scale: multiplier of the ControlNet residuals.
        mask_guidance: mask guidance weight (see :func:`ddim_sample`).
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"need one seed per prompt, got {len(seeds)} seeds for {len(prompts)} prompts")
    ldm.eval()
    autoencoder.eval()
    context = encode_context(ldm, text_encoder, prompts, device)
    scheduler = make_ddim(noise_scheduler, steps=steps)
    noise = seeded_noise(latent_shape, seeds, device)
    if controlnet is not None:
        controlnet.eval()
    latents = ddim_sample(ldm, scheduler, noise, context, guidance=guidance, controlnet=controlnet,
                          control=masks.to(device) if masks is not None else None, progress=progress,
                          conditioning_scale=conditioning_scale, mask_guidance=mask_guidance)
    return decode(autoencoder, latents, ldm.scale_factor)


def prompt_rows(ldm: nn.Module, autoencoder: nn.Module, text_encoder: nn.Module | None, prompts: Sequence[str],
                latent_shape: Sequence[int], n_per_prompt: int = 4, steps: int = 20, guidance: float = 3.0,
                seed: int = 0, noise_scheduler: nn.Module | None = None,
                device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """One grid row per prompt of ``n_per_prompt`` samples; the same seeds in every row, so rows
    differ only by the prompt (text control at a glance)."""
    from busmonai.networks.text_encoders import check_prompts

    prompts = check_prompts(prompts)
    batch_prompts = [p for p in prompts for _ in range(n_per_prompt)]
    seeds = [seed + k for _ in prompts for k in range(n_per_prompt)]
    images = sample_images(ldm, autoencoder, text_encoder, batch_prompts, latent_shape, seeds, steps=steps,
                           guidance=guidance, noise_scheduler=noise_scheduler, device=device)
    return list(images.split(n_per_prompt))


def save_prompt_samples(ldm: nn.Module, autoencoder: nn.Module, text_encoder: nn.Module | None,
                        prompts: Sequence[str], latent_shape: Sequence[int], output_dir: str,
                        n_per_prompt: int = 4, steps: int = 50, guidance: float = 3.0, seed: int = 0,
                        noise_scheduler: nn.Module | None = None, device: torch.device | str = "cpu") -> dict:
    """Sample a grid for a list of prompts and write ``samples/row{i}_{k}.png``, ``samples.png``
    (one row per prompt) and ``samples.json`` (prompts, seeds, settings) into ``output_dir``.

    Raises:
        BusmonaiInputError: an empty ``prompts`` list (names the config key and the fix).
    """
    import json
    from pathlib import Path

    import numpy as np

    from busmonai.data.imageio import save_png
    from busmonai.errors import BusmonaiInputError
    from busmonai.visualize import grid

    if not prompts:
        raise BusmonaiInputError(
            "'prompts' is an empty prompt list; give at least one, e.g. "
            "--prompts \"['breast ultrasound image of benign tumor with homogeneous echogenicity and clear boundary.']\""
        )
    if n_per_prompt < 1:
        raise BusmonaiInputError(f"'n_per_prompt' is {n_per_prompt}; sample at least one image per prompt")
    out = Path(output_dir)
    rows = []
    for index, prompt in enumerate(tqdm(list(prompts), desc="sample prompts", unit="prompt")):
        rows.extend(prompt_rows(ldm, autoencoder, text_encoder, [prompt], latent_shape, n_per_prompt, steps,
                                guidance, seed, noise_scheduler, device))
    tiles = []
    for index, row in enumerate(rows):
        for k, image in enumerate(row):
            array = (image[0].cpu().numpy() * 255).round().astype(np.uint8)
            save_png(array, out / "samples" / f"row{index:02d}_{k:02d}.png")
            tiles.append(array)
    save_png(grid(tiles, ncols=n_per_prompt, fill=255), out / "samples.png")
    settings = {"prompts": list(prompts), "n_per_prompt": n_per_prompt, "steps": steps, "guidance": guidance,
                "seeds": [seed + k for k in range(n_per_prompt)]}
    (out / "samples.json").write_text(json.dumps(settings, indent=1) + "\n")
    return settings


def preview_batch(items: Sequence[dict], image_size: int, n: int = 4) -> dict:
    """The first ``n`` items with a lesion, loaded: ``{"image", "mask"}`` tensors (n, 1, H, W) and
    their ``prompt`` list (for ControlNet preview grids)."""
    from busmonai.data.dataset import LoadPNGd

    load = LoadPNGd(keys=("image", "mask"), image_size=image_size)
    chosen = [load(dict(item)) for item in items if item.get("class") in TUMOR_CLASSES][:n]
    if not chosen:
        raise ValueError("no benign or malignant item to preview")
    return {"image": torch.stack([c["image"] for c in chosen]), "mask": torch.stack([c["mask"] for c in chosen]),
            "prompt": [c["prompt"] for c in chosen]}


def control_rows(ldm: nn.Module, controlnet: nn.Module, autoencoder: nn.Module, text_encoder: nn.Module | None,
                 batch: dict, latent_shape: Sequence[int], steps: int = 20, guidance: float = 3.0, seed: int = 0,
                 noise_scheduler: nn.Module | None = None, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Preview rows for the ControlNet: masks, the real images they belong to, and images generated
    from each mask with its image's own prompt (same seed per column)."""
    seeds = [seed + k for k in range(len(batch["prompt"]))]
    generated = sample_images(ldm, autoencoder, text_encoder, batch["prompt"], latent_shape, seeds, steps=steps,
                              guidance=guidance, noise_scheduler=noise_scheduler, controlnet=controlnet,
                              masks=batch["mask"], device=device)
    return [batch["mask"], batch["image"], generated]
