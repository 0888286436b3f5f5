"""The latent diffusion UNet with the latent scale it was trained with.

CP (MICCAI 2025) and the SCMG paper (Medical Image Analysis 2025) train a text-conditioned
latent diffusion UNet on latents scaled by ``1 / std(z)`` (docs/method.md sections 1-2). Keeping the
scale as a buffer of the module makes ``model.pt`` self-contained: the ControlNet, LoRA and
synthesis stages read it back from the checkpoint instead of recomputing it.

With ``mask_channels=1`` the UNet also takes the tumor mask, area-pooled to the latent size, as an
extra input channel from the first step (the segmentation-guided diffusion baseline, and the
papers' "mask only" row without a ControlNet). A missing mask (classifier-free guidance, the
prompt-only previews) is the constant :data:`MASK_FILL`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MASK_FILL = -1.0
"""Mask-channel value of "no mask given" (a dropped mask in training, the unconditional branch)."""
UNCONDITIONAL_FILL = -1.0
"""Context value of a dropped prompt; MONAI's ``DiffusionInferer.sample(cfg_fill_value=-1)``."""


def checkpoint_blocks(network: nn.Module) -> nn.Module:
    """Gradient checkpointing for a MONAI ``DiffusionModelUNet`` or ``ControlNet``: each down, middle
    and up block recomputes its activations in the backward pass instead of keeping them
    (``torch.utils.checkpoint``, non-reentrant), trading about a third more compute for memory.
    Outside training (no gradients) the blocks run as they are. Returns ``network``."""
    from torch.utils.checkpoint import checkpoint

    blocks = [*getattr(network, "down_blocks", []), getattr(network, "middle_block", None),
              *getattr(network, "up_blocks", [])]
    for block in (b for b in blocks if b is not None):
        plain = block.forward

        def forward(*args: Any, _plain: Any = plain, **kwargs: Any) -> Any:
            if torch.is_grad_enabled():
                return checkpoint(_plain, *args, use_reentrant=False, **kwargs)
            return _plain(*args, **kwargs)

        block.forward = forward
    return network


def checkpointed(network: nn.Module, enabled: bool = True) -> nn.Module:
    """``network`` with :func:`checkpoint_blocks` applied (to its ``controlnet`` or ``unet`` part when
    it wraps one) when ``enabled``; returns ``network``."""
    if enabled:
        checkpoint_blocks(getattr(network, "controlnet", None) or getattr(network, "unet", None) or network)
    return network


class LatentDiffusionModel(nn.Module):
    """A diffusion UNet (e.g. MONAI ``DiffusionModelUNet``) plus its latent ``scale_factor`` buffer.

    Args:
        unet: the noise-prediction network ``unet(x, timesteps, context, ...)``.
        scale_factor: multiplier applied to autoencoder latents before diffusion.
        text_encoder: a *trainable* text encoder that learns with the UNet (the small
            vocabulary encoder); it is then saved in the same checkpoint. Frozen pretrained
            encoders stay outside (their weights come from their package).
        mask_channels: 1 when the tumor mask is an input channel of the UNet.
        gradient_checkpointing: recompute the UNet blocks' activations in the backward pass
            (:func:`checkpoint_blocks`): less memory for the paper profile's SD-sized UNet.
    """

    def __init__(self, unet: nn.Module, scale_factor: float = 1.0, text_encoder: nn.Module | None = None,
                 mask_channels: int = 0, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        if mask_channels not in (0, 1):
            raise ValueError(f"mask_channels must be 0 or 1, got {mask_channels}")
        self.unet = checkpoint_blocks(unet) if gradient_checkpointing else unet
        self.text_encoder = text_encoder
        self.mask_channels = int(mask_channels)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))

    def set_scale_factor(self, value: float) -> None:
        """Store the latent scale measured on the training latents."""
        self.scale_factor.fill_(float(value))

    def mask_input(self, mask: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor:
        """The mask channel for ``latents``: ``mask`` (B, 1, H, W) in [0, 1] area-pooled to the latent
        size, or :data:`MASK_FILL` where ``mask`` is None."""
        if mask is None:
            return torch.full((latents.shape[0], 1, *latents.shape[2:]), MASK_FILL, dtype=latents.dtype,
                              device=latents.device)
        return torch.nn.functional.adaptive_avg_pool2d(mask.to(latents), tuple(latents.shape[2:]))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Predict the noise of ``x`` at ``timesteps``.

        Args:
            x: noisy latents.
            timesteps: (B,) timesteps.
            context: (B, L, D) text context.
            mask: (B, 1, H, W) tumor masks for a mask-input model (None: no mask); a mask already at
                the latent size with the fill for dropped samples is used as it is.
            **kwargs: ControlNet residuals.
        """
        if self.mask_channels:
            channel = mask if mask is not None and mask.shape[-2:] == x.shape[-2:] else self.mask_input(mask, x)
            x = torch.cat([x, channel.to(x)], dim=1)
        return self.unet(x, timesteps=timesteps, context=context, **kwargs)
