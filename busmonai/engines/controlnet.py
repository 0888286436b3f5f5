"""Training the ControlNet on top of the frozen text-conditioned LDM (docs/method.md section 2).

The loss is the LDM's (min-SNR-weighted epsilon MSE on cached latents, prompt dropout for
classifier-free guidance: :class:`busmonai.engines.diffusion.DiffusionTrainer`); only the
noise prediction changes: the ControlNet reads the tumor mask at image size and adds residuals
to the frozen UNet. Only the ControlNet's parameters train, and the EMA tracks them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from busmonai.engines.diffusion import DiffusionTrainer


class ControlNetTrainer(DiffusionTrainer):
    """:class:`DiffusionTrainer` whose prediction is ``LDM(z_t, t, c, residuals=ControlNet(z_t, t, mask, c))``.

    Args:
        controlnet: the trainable ControlNet (a :class:`busmonai.networks.controlnet.BoundControlNet`).
        conditioning_scale: multiplier of the ControlNet residuals.
        **kwargs: as for :class:`DiffusionTrainer`; ``network`` is the frozen LDM and batches
            carry ``mask`` (B, 1, H, W) beside ``latent`` and ``prompt``.
    """

    def __init__(self, controlnet: nn.Module, conditioning_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.controlnet = controlnet
        self.conditioning_scale = float(conditioning_scale)
        base = getattr(self.network, "module", self.network)
        base.requires_grad_(False)
        base.eval()

    def ema_source(self) -> nn.Module:
        """The EMA follows the ControlNet."""
        return getattr(self.controlnet, "module", self.controlnet)

    def train_mode(self) -> None:
        """Train the ControlNet; the LDM stays frozen in eval mode."""
        self.controlnet.train()
        getattr(self.network, "module", self.network).eval()

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                      batch: dict[str, Any], mask_kept: torch.Tensor | None = None) -> torch.Tensor:
        masks = batch["mask"].to(noisy.device)
        down, mid = self.controlnet(x=noisy, timesteps=timesteps, controlnet_cond=masks,
                                    conditioning_scale=self.conditioning_scale, context=context)
        return self.network(noisy, timesteps=timesteps, context=context,
                            down_block_additional_residuals=down, mid_block_additional_residual=mid)
