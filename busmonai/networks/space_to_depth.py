"""A lossless, parameter-free "autoencoder": the image folded into channels (space to depth).

The latent diffusion papers (docs/method.md sections 1-3) diffuse in the latent space of a trained
``AutoencoderKL``. At 64 px on a CPU the autoencoder is the weak link: its 2x compression
(16 x 16 x 8 latents) costs about 6 dB and a quarter of the training budget, and its blur is part
of the distance between synthetic and real images. Folding each ``factor x factor`` patch of the
image into channels (``pixel_unshuffle``, as patch-based diffusion models do) gives the diffusion
UNet the same 16 x 16 grid with ``factor ** 2`` channels per image channel, with nothing to train
and nothing lost: ``decode(encode(x)) == x``.

It has the interface of MONAI's ``AutoencoderKL`` that the pipeline uses: ``encode`` returns
``(z_mu, z_sigma)``, ``decode`` maps back, ``forward`` returns ``(reconstruction, z_mu, z_sigma)``
and ``latent_channels`` names the latent width. Intensities in [0, 1] are mapped to [-1, 1] so that
the latents are centred as diffusion expects.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class SpaceToDepth(nn.Module):
    """Image (B, C, H, W) in [0, 1] <-> latents (B, C * factor**2, H / factor, W / factor) in [-1, 1].

    Args:
        spatial_dims: must be 2 (the bundles are 2D).
        in_channels: image channels.
        factor: patch side folded into channels; H and W must be multiples of it.

    Raises:
        ValueError: ``spatial_dims`` other than 2, or a non-positive ``in_channels`` / ``factor``.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, factor: int = 4) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"SpaceToDepth is 2D; got spatial_dims={spatial_dims}")
        if in_channels < 1 or factor < 1:
            raise ValueError(f"in_channels and factor must be positive; got {in_channels} and {factor}")
        self.in_channels = int(in_channels)
        self.factor = int(factor)
        self.latent_channels = self.in_channels * self.factor**2

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, zeros)``: the folded image and a zero "posterior spread" (the map is exact)."""
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the fold factor {self.factor}; "
                             f"use an image_size divisible by {self.factor}")
        z = functional.pixel_unshuffle(x * 2.0 - 1.0, self.factor)
        return z, torch.zeros_like(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The image of latents ``z`` (the inverse of :meth:`encode`)."""
        return (functional.pixel_shuffle(z, self.factor) + 1.0) / 2.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, sigma = self.encode(x)
        return self.decode(z), z, sigma
