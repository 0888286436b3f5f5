"""The latent diffusion UNet with the latent scale it was trained with.

CP (MICCAI 2025) and the SCMG paper (Medical Image Analysis 2025) train a text-conditioned
latent diffusion UNet on latents scaled by ``1 / std(z)`` (METHOD.md sections 1-2). Keeping the
scale as a buffer of the module makes ``model.pt`` self-contained: the ControlNet, LoRA and
synthesis stages read it back from the checkpoint instead of recomputing it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class LatentDiffusionModel(nn.Module):
    """A diffusion UNet (e.g. MONAI ``DiffusionModelUNet``) plus its latent ``scale_factor`` buffer.

    Args:
        unet: the noise-prediction network ``unet(x, timesteps, context, ...)``.
        scale_factor: multiplier applied to autoencoder latents before diffusion.
        text_encoder: a *trainable* text encoder that learns with the UNet (the small
            vocabulary encoder); it is then saved in the same checkpoint. Frozen pretrained
            encoders stay outside (their weights come from their package).
    """

    def __init__(self, unet: nn.Module, scale_factor: float = 1.0, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))

    def set_scale_factor(self, value: float) -> None:
        """Store the latent scale measured on the training latents."""
        self.scale_factor.fill_(float(value))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        """Predict the noise of ``x`` at ``timesteps`` (extra kwargs: ControlNet residuals)."""
        return self.unet(x, timesteps=timesteps, context=context, **kwargs)
