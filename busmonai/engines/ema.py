"""An exponential moving average of a network's weights, with the decay warmed up.

The diffusion stages sample with their EMA weights, and the SCMG generator can draw with its own:
GANs have drawn with an EMA of the generator's weights since Karras et al., "Progressive Growing
of GANs", ICLR 2018 (better samples than the last weights, at no training cost).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["ema_model", "get_warmup_ema_multi_avg_fn", "warmup_decay"]


def warmup_decay(decay: float, updates: int) -> float:
    """EMA decay after ``updates`` averaging steps: ``min(decay, (1 + n) / (10 + n))``.

    A fixed 0.999 from the first step keeps 14 % of the weight on the initial network after
    2,000 steps (``0.999 ** 2000``); for a ControlNet that is its zero-initialised output
    convolutions, i.e. no mask control. The warm-up forgets the start within tens of steps.
    """
    n = max(0, int(updates))
    return min(float(decay), (1.0 + n) / (10.0 + n))


def get_warmup_ema_multi_avg_fn(decay: float = 0.999) -> Callable[..., None]:
    """``multi_avg_fn`` for ``AveragedModel``: EMA with the decay of :func:`warmup_decay`."""

    @torch.no_grad()
    def ema_update(ema_params: list[torch.Tensor], current_params: list[torch.Tensor],
                   num_averaged: torch.Tensor | int) -> None:
        d = warmup_decay(decay, int(num_averaged))
        if torch.is_floating_point(ema_params[0]) or torch.is_complex(ema_params[0]):
            torch._foreach_lerp_(ema_params, current_params, 1.0 - d)
        else:  # integer buffers
            for p_ema, p_model in zip(ema_params, current_params):
                p_ema.copy_(p_ema * d + p_model * (1.0 - d))

    return ema_update


def ema_model(network: nn.Module, decay: float = 0.999, warmup: bool = True) -> AveragedModel:
    """An EMA copy of ``network`` (``torch.optim.swa_utils``), buffers included.

    Args:
        network: the trained module.
        decay: the EMA decay (reached after the warm-up).
        warmup: ramp the decay up as :func:`warmup_decay` (False: ``decay`` from the first step).
    """
    fn = get_warmup_ema_multi_avg_fn(decay) if warmup else get_ema_multi_avg_fn(decay)
    return AveragedModel(network, multi_avg_fn=fn, use_buffers=True)
