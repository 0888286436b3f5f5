"""DDIM sampling with classifier-free guidance, optionally steered by a ControlNet mask.

One loop serves the text-only LDM, the ControlNet (text + mask) and the mask-only ablation
(METHOD.md section 2). Guidance follows MONAI's ``DiffusionInferer.sample``: the unconditional
branch's context is filled with -1 and ``eps = eps_u + w (eps_c - eps_u)``. The ControlNet takes
the mask at image size through its own conditioning embedding (DESIGN.md: MONAI's
``ControlNetLatentDiffusionInferer`` resizes the mask to the latent size first, which breaks a
multi-stage conditioning embedding); both guidance branches see the mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.schedulers import DDIMScheduler
from torch import nn
from tqdm import tqdm

from busmonai.engines.diffusion import UNCONDITIONAL_FILL


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


@torch.no_grad()
def ddim_sample(
    ldm: nn.Module,
    scheduler: DDIMScheduler,
    noise: torch.Tensor,
    context: torch.Tensor | None,
    guidance: float = 3.0,
    controlnet: nn.Module | None = None,
    control: torch.Tensor | None = None,
    conditioning_scale: float = 1.0,
    progress: bool = False,
) -> torch.Tensor:
    """Denoise ``noise`` (B, C, h, w) into scaled latents.

    Args:
        ldm: a :class:`busmonai.networks.latent_diffusion.LatentDiffusionModel`.
        scheduler: DDIM scheduler with its timesteps set.
        noise: the initial latents (draw them from a seeded generator for reproducibility).
        context: (B, L, D) text embeddings, or None.
        guidance: classifier-free guidance scale; 1 (or no context) disables the unconditional pass.
        controlnet: a MONAI ``ControlNet`` or None.
        control: (B, 1, H, W) masks for the ControlNet, at image size.
        conditioning_scale: multiplier of the ControlNet residuals.
        progress: show a progress bar over the steps.

    Returns:
        Latents in the diffusion model's scale (divide by ``ldm.scale_factor`` to decode).
    """
    guided = context is not None and guidance != 1.0
    if guided:
        context_in = torch.cat([torch.full_like(context, UNCONDITIONAL_FILL), context])
        control_in = torch.cat([control, control]) if control is not None else None
    else:
        context_in, control_in = context, control
    latents = noise
    for t in tqdm(scheduler.timesteps, desc="DDIM", disable=not progress, leave=False):
        model_in = torch.cat([latents, latents]) if guided else latents
        timesteps = torch.full((model_in.shape[0],), int(t), device=noise.device, dtype=torch.long)
        extra = {}
        if controlnet is not None:
            down, mid = controlnet(x=model_in, timesteps=timesteps, controlnet_cond=control_in,
                                   conditioning_scale=conditioning_scale, context=context_in)
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        eps = ldm(model_in, timesteps=timesteps, context=context_in, **extra)
        if guided:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        latents, _ = scheduler.step(eps, int(t), latents)
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
                  progress: bool = False) -> torch.Tensor:
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
                          control=masks.to(device) if masks is not None else None, progress=progress)
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
    chosen = [load(dict(item)) for item in items if item.get("class") in ("benign", "malignant")][:n]
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
