"""Downstream networks of the papers' evaluation (docs/method.md section 6), built without downloads.

- Classifiers (benign vs malignant): EfficientNet-B0, ResNet50, DenseNet121 and MobileNetV2, as
  the journal paper (Medical Image Analysis 2025) and CP (MICCAI 2025) use; built by ``timm``
  with ``pretrained=False`` and one input channel. Any other ``timm`` model name works too (the
  tests use ``test_efficientnet``). Pretrained weights are only read from a local file.
- Segmenters (tumor masks): MONAI's UNet (the segmentation bundle's ``network_arch``, with its
  real arguments), and by override files Attention UNet, a residual UNet (``num_res_units``) and
  UNet++ (``BasicUNetPlusPlus``, wrapped here to return one output). nnU-Net, also in the
  papers, is a framework of its own and not rebuilt here.

Every network returns logits of shape (B, num_classes) or (B, out_channels, H, W) and is
TorchScript-scriptable, so ``python -m monai.bundle ckpt_export`` works on it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from busmonai.checkpoint_io import read_checkpoint
from busmonai.errors import BusmonaiInputError

logger = logging.getLogger(__name__)

CLASSIFIERS: dict[str, str] = {
    "efficientnet_b0": "efficientnet_b0",
    "resnet50": "resnet50",
    "densenet121": "densenet121",
    "mobilenetv2": "mobilenetv2_100",
}


def classifier(
    name: str = "efficientnet_b0",
    num_classes: int = 2,
    in_channels: int = 1,
    pretrained_weights: str | Path | None = None,
    drop_rate: float = 0.0,
) -> nn.Module:
    """A ``timm`` image classifier with random weights (or local ``pretrained_weights``).

    Args:
        name: ``efficientnet_b0``, ``resnet50``, ``densenet121``, ``mobilenetv2`` or any ``timm``
            model name.
        num_classes: output logits (2: benign, malignant).
        in_channels: image channels (1 for B-mode).
        pretrained_weights: optional local state dict (e.g. ImageNet weights saved with
            ``torch.save(model.state_dict())``), loaded by :func:`load_matching`.
        drop_rate: dropout before the classifier head.

    Raises:
        BusmonaiInputError: an unknown name, or weights that do not fit.
    """
    import timm

    model_name = CLASSIFIERS.get(name, name)
    if not timm.is_model(model_name):
        raise BusmonaiInputError(
            f"network_name {name!r}: unknown classifier; use one of {', '.join(CLASSIFIERS)} or a timm model name"
        )
    model = timm.create_model(model_name, pretrained=False, in_chans=in_channels, num_classes=num_classes,
                              drop_rate=drop_rate)
    if pretrained_weights:
        load_matching(model, pretrained_weights, "pretrained_weights")
    return model


def load_matching(model: nn.Module, path: str | Path, key: str) -> int:
    """Load the tensors of a local state dict that fit ``model``; return how many were loaded.

    A 3-channel first convolution is summed over its input channels to fit a 1-channel model
    (as ``timm`` adapts ImageNet weights); tensors of other shapes (the 1000-class head) and
    unknown names are skipped and logged. Nothing is downloaded.

    Raises:
        BusmonaiInputError: the file is missing, unreadable, or no tensor fits.
    """
    state = read_checkpoint(path, key)
    for entry in ("state_dict", "model"):
        if isinstance(state.get(entry), dict):
            state = state[entry]
            break
    own = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for name, tensor in state.items():
        target = own.get(name)
        if target is None or not isinstance(tensor, torch.Tensor):
            skipped.append(name)
        elif tensor.shape == target.shape:
            loaded[name] = tensor
        elif tensor.ndim == 4 and target.ndim == 4 and target.shape[1] == 1 and tensor.shape[0] == target.shape[0] \
                and tensor.shape[2:] == target.shape[2:]:
            loaded[name] = tensor.sum(dim=1, keepdim=True)
        else:
            skipped.append(name)
    if not loaded:
        raise BusmonaiInputError(
            f"{path}: no tensor of '{key}' fits the configured network; give weights of the same architecture"
        )
    model.load_state_dict(loaded, strict=False)
    logger.info("%s: loaded %d tensors, skipped %d (%s)", path, len(loaded), len(skipped), ", ".join(skipped[:4]))
    return len(loaded)


class FirstOutput(nn.Module):
    """Wrap a network that returns a list of deep-supervision outputs (MONAI ``BasicUNetPlusPlus``)
    so that it returns the full-resolution one only."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def unet_plus_plus(in_channels: int = 1, out_channels: int = 2, channels: Sequence[int] = (16, 32, 64, 128),
                   dropout: float = 0.0) -> nn.Module:
    """MONAI's ``BasicUNetPlusPlus`` returning the full-resolution logits only.

    ``BasicUNetPlusPlus`` always has five encoder levels: ``channels`` (the bundle's
    ``seg_channels``) give the first ones and are extended by doubling.
    """
    from monai.networks.nets import BasicUNetPlusPlus

    widths = [int(c) for c in channels][:5]
    if not widths:
        raise BusmonaiInputError("seg_channels is empty: give at least one width")
    while len(widths) < 5:
        widths.append(widths[-1] * 2)
    return FirstOutput(BasicUNetPlusPlus(2, in_channels, out_channels, features=(*widths, widths[0]), dropout=dropout))
