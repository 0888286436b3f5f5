"""Single-input views of the generative networks for ``python -m monai.bundle verify_net_in_out``.

MONAI's check feeds one random tensor, named ``image`` in the bundle's ``metadata.json``, to the
network and compares the output's channels and dtype with the metadata. The downstream networks
take an image and return logits, so their ``network_def`` is checked as it is. The generative
networks take more (timesteps, a text context, a mask, a latent code) or return a tuple; each
bundle declares a ``verify_net`` that wraps its ``network_def`` with fixed values for the other
inputs (documented in the bundle's ``network_data_format``), as the model zoo's generative
bundles do:

``python -m monai.bundle verify_net_in_out verify_net --meta_file B/configs/metadata.json
--config_file B/configs/train.json``
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ControlResiduals", "Denoiser", "MaskGenerator", "Reconstruction", "latent_shape"]


@torch.no_grad()
def latent_shape(autoencoder: nn.Module, image_size: int, image_channels: int = 1) -> tuple[int, int, int]:
    """(C, h, w) of ``autoencoder``'s latents for ``image_size`` images, found by encoding a blank image
    (``AutoencoderKL`` and :class:`~busmonai.networks.space_to_depth.SpaceToDepth` alike)."""
    device = next(iter(autoencoder.parameters()), torch.zeros(())).device
    z_mu, _ = autoencoder.encode(torch.zeros(1, image_channels, image_size, image_size, device=device))
    return tuple(int(v) for v in z_mu.shape[1:])  # type: ignore[return-value]


class Reconstruction(nn.Module):
    """``AutoencoderKL``: image -> reconstruction (the first of ``(recon, z_mu, z_sigma)``)."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.autoencoder(image)[0]


def _context(batch: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(batch, 1, dim, dtype=like.dtype, device=like.device)


class Denoiser(nn.Module):
    """The latent diffusion UNet: noisy latent -> predicted noise, at timestep ``timestep`` with an
    all-zero one-token text context of width ``context_dim``."""

    def __init__(self, network: nn.Module, context_dim: int, timestep: int = 500) -> None:
        super().__init__()
        self.network = network
        self.context_dim = int(context_dim)
        self.timestep = int(timestep)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        t = torch.full((image.shape[0],), self.timestep, dtype=torch.long, device=image.device)
        return self.network(image, timesteps=t, context=_context(image.shape[0], self.context_dim, image))


class ControlResiduals(nn.Module):
    """A ControlNet: tumor mask (at image size) -> its middle-block residual, for a zero latent of
    ``latent_channels`` x ``image size / downsample`` at timestep ``timestep``."""

    def __init__(self, controlnet: nn.Module, latent_channels: int, downsample: int, context_dim: int,
                 timestep: int = 500) -> None:
        super().__init__()
        self.controlnet = controlnet
        self.latent_channels = int(latent_channels)
        self.downsample = int(downsample)
        self.context_dim = int(context_dim)
        self.timestep = int(timestep)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b, _, h, w = image.shape
        latent = torch.zeros(b, self.latent_channels, h // self.downsample, w // self.downsample,
                             dtype=image.dtype, device=image.device)
        t = torch.full((b,), self.timestep, dtype=torch.long, device=image.device)
        _, mid = self.controlnet(x=latent, timesteps=t, controlnet_cond=image,
                                 context=_context(b, self.context_dim, image))
        return mid


class MaskGenerator(nn.Module):
    """The SCMG generator: bounding-rectangle map -> soft mask, for tumor type ``tumor_type`` and an
    all-zero latent code."""

    def __init__(self, generator: nn.Module, tumor_type: int = 0) -> None:
        super().__init__()
        self.generator = generator
        self.tumor_type = int(tumor_type)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        z = torch.zeros(b, self.generator.latent_dim, dtype=image.dtype, device=image.device)
        types = torch.full((b,), self.tumor_type, dtype=torch.long, device=image.device)
        return self.generator(z, types, image)
