"""Segmentation cycle consistency for mask-conditioned diffusion (ControlNet++).

ControlNet++ (Li et al., "ControlNet++: Improving Conditional Controls with Efficient
Consistency Feedback", ECCV 2024) adds to the diffusion loss a reward that a frozen segmenter
finds the conditioning mask in the generated image. Its efficient form needs no sampling chain:
the training latent is noised to a small timestep ``t <= t_max`` (where the one-step estimate is
already sharp), the clean latent is estimated in one step,

``z0_hat = (z_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t)``,

decoded by the frozen autoencoder and segmented; the segmentation loss against the mask
back-propagates through decoder and segmenter into the trained network. Samples at larger
timesteps, and samples whose mask was dropped for guidance, get no consistency term.

A small segmenter is easy to fool, so adherence must be judged by another segmenter than the one
in this loss (``scripts/generator_diagnostics.py`` takes the judge separately).
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from monai.networks.schedulers import Scheduler
from torch import nn

from busmonai.errors import BusmonaiInputError

__all__ = ["SegmentationConsistency", "consistency_term", "one_step_clean_estimate"]


def one_step_clean_estimate(noisy: torch.Tensor, noise_prediction: torch.Tensor, timesteps: torch.Tensor,
                            scheduler: Scheduler) -> torch.Tensor:
    """``(z_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t)`` with ``a_t`` the scheduler's cumulative alpha."""
    alphas = scheduler.alphas_cumprod.to(noisy.device)[timesteps].float().view(-1, *([1] * (noisy.ndim - 1)))
    return (noisy - (1.0 - alphas).sqrt() * noise_prediction) / alphas.sqrt()


class SegmentationConsistency:
    """The ControlNet++ consistency term: Dice + cross-entropy of a frozen segmenter's prediction on
    the decoded one-step estimate against the conditioning mask.

    Args:
        autoencoder: the chain's frozen autoencoder (``decode`` maps latents to images).
        segmenter: a frozen segmentation network returning ``(B, 2, H, W)`` logits for images in
            [0, 1] (a ``segmentation`` bundle's model, trained on real images).
        weight: multiplier of the term in the training loss (> 0).
        max_timestep: only samples with ``t < max_timestep`` get the term (ControlNet++: 200 of
            1,000).

    Raises:
        ValueError: a weight <= 0 or a max_timestep < 1.
    """

    def __init__(self, autoencoder: nn.Module, segmenter: nn.Module, weight: float, max_timestep: int = 200) -> None:
        if not weight > 0:
            raise ValueError(f"consistency_weight must be > 0 to build the consistency term, got {weight}")
        if max_timestep < 1:
            raise ValueError(f"consistency_max_timestep must be >= 1, got {max_timestep}")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.segmenter = segmenter.eval().requires_grad_(False)
        self.weight = float(weight)
        self.max_timestep = int(max_timestep)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def selected(self, timesteps: torch.Tensor, mask_kept: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean ``(B,)``: the samples that get the term."""
        chosen = timesteps < self.max_timestep
        return chosen if mask_kept is None else chosen & mask_kept.to(chosen.device)

    def __call__(self, noisy: torch.Tensor, noise_prediction: torch.Tensor, timesteps: torch.Tensor,
                 masks: torch.Tensor, scheduler: Scheduler, scale_factor: torch.Tensor | float,
                 mask_kept: torch.Tensor | None = None) -> torch.Tensor:
        """The unweighted term (a scalar, 0 with a graph when no sample is selected).

        Args:
            noisy: ``z_t`` (scaled latents, as the network sees them).
            noise_prediction: the network's ``eps_hat`` for ``noisy``.
            timesteps: ``(B,)`` timesteps.
            masks: ``(B, 1, H, W)`` conditioning masks at image size.
            scheduler: the training noise scheduler.
            scale_factor: the latent scale factor (latents are divided by it before decoding).
            mask_kept: ``(B,)`` False where the mask was dropped for guidance.
        """
        chosen = self.selected(timesteps, mask_kept)
        if not bool(chosen.any()):
            return noise_prediction.sum() * 0.0
        clean = one_step_clean_estimate(noisy[chosen], noise_prediction[chosen].float(), timesteps[chosen], scheduler)
        images = self.autoencoder.decode(clean / scale_factor)
        logits = self.segmenter(images)
        return self.loss(logits, (masks[chosen] > 0.5).float())


def consistency_term(autoencoder: nn.Module, segmenter_ckpt: str | None, weight: float, max_timestep: int = 200,
                     device: torch.device | str = "cpu") -> SegmentationConsistency | None:
    """The configured consistency term: None for ``weight`` 0 (the default), else the term with the
    segmenter rebuilt from ``segmenter_ckpt`` (a ``segmentation`` bundle's ``model.pt``).

    Raises:
        BusmonaiInputError: a weight > 0 without a segmenter checkpoint, or a negative weight.
    """
    from busmonai.networks.described import load_network

    if weight < 0:
        raise BusmonaiInputError(f"consistency_weight {weight}: use 0 (off) or a positive weight")
    if weight == 0:
        return None
    if not segmenter_ckpt:
        raise BusmonaiInputError(
            f"consistency_weight {weight} needs consistency_segmenter_ckpt: the model.pt of a segmentation bundle "
            "trained on real images (judge adherence with another one)")
    segmenter = load_network(segmenter_ckpt, "consistency_segmenter_ckpt", "segmentation").to(device)
    return SegmentationConsistency(autoencoder, segmenter, weight, max_timestep)
