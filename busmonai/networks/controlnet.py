"""ControlNet bound to the latent diffusion UNet it was trained on (docs/method.md section 2).

CP (MICCAI 2025) adds the tumor mask as structural guidance with a ControlNet: a trainable copy of
the frozen UNet's encoder whose zero-initialised output convolutions add residuals to the UNet's
skip connections. :func:`init_from_unet` copies the trained UNet's encoder weights into MONAI's
``ControlNet``; :class:`BoundControlNet` stores the digest of the LDM checkpoint it was trained
against, so synthesis can refuse a ControlNet paired with another UNet.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.utils import copy_model_state
from torch import nn

from busmonai.errors import BusmonaiInputError

DIGEST_LENGTH = 16


def init_from_unet(controlnet: nn.Module, unet: nn.Module) -> list[str]:
    """Copy every UNet weight whose name and shape match into ``controlnet`` (time embedding,
    input convolution, down and middle blocks); returns the copied keys.

    Raises:
        ValueError: nothing matched (the ControlNet is not a copy of this UNet's encoder).
    """
    _, copied, _ = copy_model_state(controlnet, unet.state_dict(), inplace=True)
    if not copied:
        raise ValueError("no UNet weight fits the ControlNet: build it with the UNet's channels and levels")
    return list(copied)


def _encode_digest(digest: str) -> torch.Tensor:
    # float codes, not uint8: an EMA (torch.optim.swa_utils with buffers) lerps every buffer, and
    # lerping equal float values leaves them unchanged
    data = digest.encode("ascii")[:DIGEST_LENGTH].ljust(DIGEST_LENGTH, b" ")
    return torch.tensor(list(data), dtype=torch.float32)


class BoundControlNet(nn.Module):
    """A MONAI ``ControlNet`` plus the digest of the LDM checkpoint it steers.

    Args:
        controlnet: the ControlNet.
        base_digest: :func:`busmonai.files.file_digest` of the LDM ``model.pt``.
    """

    def __init__(self, controlnet: nn.Module, base_digest: str = "") -> None:
        super().__init__()
        self.controlnet = controlnet
        self.register_buffer("base_digest", _encode_digest(base_digest))

    @property
    def digest(self) -> str:
        """The recorded LDM checkpoint digest."""
        return bytes(int(round(v)) for v in self.base_digest.tolist()).decode("ascii").strip()

    def check_base(self, digest: str, path: str = "ldm_ckpt") -> None:
        """Raise if this ControlNet was trained against another LDM checkpoint than ``digest``."""
        if self.digest and self.digest != digest[:DIGEST_LENGTH]:
            raise BusmonaiInputError(
                f"the ControlNet was trained on the LDM checkpoint {self.digest}, but {path} is {digest[:DIGEST_LENGTH]}; "
                "pass the LDM it was trained with (--ldm_ckpt) or retrain bundles/controlnet"
            )

    def forward(self, *args: Any, **kwargs: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``ControlNet(x, timesteps, controlnet_cond, conditioning_scale, context)``."""
        return self.controlnet(*args, **kwargs)
