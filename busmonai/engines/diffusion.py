"""Training the text-conditioned latent diffusion UNet (docs/method.md section 2).

DDPM noise prediction ``E ||eps - eps_theta(z_t, t, C(tau))||^2`` on cached latents with, from the
docs/design.md probes of what a CPU budget buys: min-SNR-gamma loss weighting (Hang et al., ICCV 2023),
an exponential moving average of the weights (the EMA weights are what sampling uses), gradient
clipping and a warm-up. Classifier-free guidance is trained by prompt dropout: a dropped
prompt's context is filled with -1, the value MONAI's inferers use for the unconditional branch
at sampling time (``cfg_fill_value``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import Trainer
from monai.networks.schedulers import Scheduler
from torch import nn
from torch.optim.swa_utils import AveragedModel

from busmonai.engines.consistency import SegmentationConsistency
from busmonai.networks.latent_diffusion import MASK_FILL, UNCONDITIONAL_FILL



def sample_timesteps(n: int, num_train_timesteps: int, power: float = 1.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Training timesteps ``floor(T (1 - u ** power))`` for ``u ~ U[0, 1)``: uniform for power 1,
    biased to high noise (where the layout of an image forms) for power > 1."""
    if power <= 0:
        raise ValueError(f"timestep_power must be > 0, got {power}")
    u = torch.rand(n, generator=generator)
    t = torch.floor(num_train_timesteps * (1.0 - u.pow(power))).long()
    return t.clamp_(0, num_train_timesteps - 1)


def lesion_weights(masks: torch.Tensor, size: Sequence[int], weight: float) -> torch.Tensor:
    """Per-pixel loss weights ``1 + weight * m`` at latent size, ``m`` the mask's lesion fraction in
    each latent pixel (area pooling); the lesion covers a median 5 % of a BUSI image."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(masks.float(), tuple(int(v) for v in size))
    return 1.0 + float(weight) * pooled


def min_snr_weights(scheduler: Scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights for epsilon prediction: ``min(SNR_t, gamma) / SNR_t`` (1 if gamma <= 0)."""
    if gamma <= 0:
        return torch.ones_like(timesteps, dtype=torch.float32)
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1.0 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def drop_context(context: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each sample's context by the unconditional fill with ``probability``."""
    if probability <= 0:
        return context
    keep = torch.rand(context.shape[0], generator=generator, device="cpu") >= probability
    keep = keep.to(context.device).view(-1, *([1] * (context.ndim - 1)))
    return torch.where(keep, context, torch.full_like(context, UNCONDITIONAL_FILL))


class DiffusionTrainer(Trainer):
    """An Ignite trainer for epsilon-prediction diffusion on cached latents.

    Each iteration: scale the batch's ``latent`` by the network's ``scale_factor``, draw noise and
    timesteps, add noise with ``noise_scheduler``, encode the batch's prompts with
    ``context_fn`` (with prompt dropout), predict the noise with :meth:`predict_noise`, and step
    the optimizer on the min-SNR-weighted MSE. Subclasses (ControlNet) override
    :meth:`predict_noise` and :meth:`trainable_parameters`.

    Args:
        device: training device.
        max_epochs: epochs to run.
        train_data_loader: yields dicts with ``latent`` (B, C, h, w) and ``prompt`` (list of str).
        network: a :class:`busmonai.networks.latent_diffusion.LatentDiffusionModel`.
        optimizer: optimizer of the trainable parameters.
        noise_scheduler: a MONAI ``DDPMScheduler``.
        context_fn: ``context_fn(prompts) -> (B, L, D)`` text embeddings (a cache lookup for
            frozen encoders).
        condition_dropout: probability of dropping a prompt (classifier-free guidance).
        min_snr_gamma: gamma of the min-SNR weighting; 0 for plain MSE.
        ema: an EMA model updated after every step, or None.
        grad_clip: max gradient norm; 0 for none.
        seed: seed of the trainer's own generator (noise, timesteps, prompt dropout).
        train_handlers: Ignite handlers to attach.
        lesion_weight: ``lambda`` of the lesion-weighted loss ``(1 + lambda * mask) * (eps - eps_hat)^2``
            (needs ``mask`` in the batch; 0: every pixel alike).
        timestep_power: see :func:`sample_timesteps` (1: uniform timesteps).
        mask_dropout: for a mask-input network (``mask_channels`` 1): probability of replacing a
            sample's mask by the "no mask" fill, independently of the prompt dropout, so that mask
            and text can be guided separately.
        consistency: a :class:`busmonai.engines.consistency.SegmentationConsistency` (ControlNet++)
            added to the loss with its weight (needs ``mask`` in the batches), or None.
        accumulation_steps: iterations whose gradients are summed (each loss divided by it) before one
            optimizer step, clipping and EMA update: the papers' effective batch is ``batch_size`` times
            this. The LR scheduler still counts iterations.
        **kwargs: passed to ``monai.engines.Trainer`` (``train_handlers``, ``epoch_length``...);
            ``amp=True`` runs the network's forward pass under bfloat16 autocast where the device
            supports it (no gradient scaler is needed; float32 on a GPU without bfloat16).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Any,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        noise_scheduler: Scheduler,
        context_fn: Callable[[Sequence[str]], torch.Tensor],
        condition_dropout: float = 0.1,
        min_snr_gamma: float = 5.0,
        ema: AveragedModel | None = None,
        grad_clip: float = 1.0,
        seed: int = 0,
        train_handlers: Sequence[Any] | None = None,
        lesion_weight: float = 0.0,
        timestep_power: float = 1.0,
        mask_dropout: float = 0.1,
        consistency: SegmentationConsistency | None = None,
        accumulation_steps: int = 1,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("decollate", False)
        super().__init__(device=device, max_epochs=max_epochs, data_loader=train_data_loader,
                         handlers=train_handlers, **kwargs)
        self.network = network
        self.optimizer = optimizer
        self.noise_scheduler = noise_scheduler
        self.context_fn = context_fn
        self.condition_dropout = float(condition_dropout)
        self.min_snr_gamma = float(min_snr_gamma)
        self.ema = ema
        self.grad_clip = float(grad_clip)
        self.generator = torch.Generator().manual_seed(seed)
        if lesion_weight < 0:
            raise ValueError(f"lesion_weight must be >= 0, got {lesion_weight}")
        self.lesion_weight = float(lesion_weight)
        self.timestep_power = float(timestep_power)
        if not 0.0 <= mask_dropout <= 1.0:
            raise ValueError(f"mask_dropout must be in [0, 1], got {mask_dropout}")
        self.mask_dropout = float(mask_dropout)
        self.consistency = consistency
        if int(accumulation_steps) < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        self.accumulation_steps = int(accumulation_steps)
        self._accumulated = 0  # iterations whose gradients wait for the next optimizer step
        kind = torch.device(device).type
        bf16 = kind == "cpu" or (kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        self.autocast_dtype = torch.bfloat16 if self.amp and bf16 else None  # None: float32 throughout
        sample_timesteps(1, 2, self.timestep_power)  # validates the power

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer steps (for gradient clipping)."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def ema_source(self) -> nn.Module:
        """The module whose weights the EMA follows (the trained network, unwrapped from DDP)."""
        return getattr(self.network, "module", self.network)

    def train_mode(self) -> None:
        """Put the trained modules in training mode."""
        self.network.train()

    def draw_mask_kept(self, batch_size: int) -> torch.Tensor | None:
        """For a mask-input network: ``(B,)`` True where the sample keeps its mask (mask dropout);
        None for a network that does not read a mask channel (the ControlNet always sees it)."""
        if not getattr(getattr(self.network, "module", self.network), "mask_channels", 0):
            return None
        if self.mask_dropout <= 0:
            return torch.ones(batch_size, dtype=torch.bool)
        return torch.rand(batch_size, generator=self.generator) >= self.mask_dropout

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                      batch: dict[str, Any], mask_kept: torch.Tensor | None = None) -> torch.Tensor:
        """The network's noise prediction (with the batch's masks for a mask-input network, replaced
        by the "no mask" fill where ``mask_kept`` is False)."""
        model = getattr(self.network, "module", self.network)
        if getattr(model, "mask_channels", 0):
            if "mask" not in batch:
                raise ValueError("a mask-input LDM (mask_channels 1) needs 'mask' in the training batches")
            channel = model.mask_input(batch["mask"].to(noisy.device), noisy)
            if mask_kept is not None:
                channel = torch.where(mask_kept.to(noisy.device).view(-1, 1, 1, 1), channel,
                                      torch.full_like(channel, MASK_FILL))
            return self.network(noisy, timesteps=timesteps, context=context, mask=channel)
        return self.network(noisy, timesteps=timesteps, context=context)

    def train_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One optimizer step on ``batch`` outside ``run()`` (benchmarks): the iteration's output."""
        return self._iteration(self, batch)

    def _iteration(self, engine: DiffusionTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        device = engine.state.device
        model = getattr(engine.network, "module", engine.network)  # unwrap DistributedDataParallel
        latents = batchdata["latent"].to(device) * model.scale_factor
        noise = torch.randn(latents.shape, generator=engine.generator).to(device)
        timesteps = sample_timesteps(latents.shape[0], engine.noise_scheduler.num_train_timesteps,
                                     engine.timestep_power, engine.generator).to(device)
        noisy = engine.noise_scheduler.add_noise(original_samples=latents, noise=noise, timesteps=timesteps)
        context = drop_context(engine.context_fn(list(batchdata["prompt"])).to(device),
                               engine.condition_dropout, engine.generator)
        mask_kept = engine.draw_mask_kept(latents.shape[0])
        engine.train_mode()
        window = engine.accumulation_steps
        if engine._accumulated == 0:  # first iteration of an accumulation window
            engine.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=engine.autocast_dtype or torch.float32,
                            enabled=engine.autocast_dtype is not None):
            prediction = engine.predict_noise(noisy, timesteps, context, batchdata, mask_kept)
        error = (prediction.float() - noise.float()).pow(2)
        if engine.lesion_weight > 0:
            if "mask" not in batchdata:
                raise ValueError("lesion_weight > 0 needs 'mask' in the training batches")
            weights = lesion_weights(batchdata["mask"].to(device), error.shape[-2:], engine.lesion_weight)
            per_sample = (error * weights).sum(dim=list(range(1, noise.ndim))) / \
                (weights.sum(dim=list(range(1, noise.ndim))) * error.shape[1])
        else:
            per_sample = error.mean(dim=list(range(1, noise.ndim)))
        loss = (per_sample * min_snr_weights(engine.noise_scheduler, timesteps, engine.min_snr_gamma)).mean()
        output = {"mse": per_sample.mean().item()}
        if engine.consistency is not None:
            if "mask" not in batchdata:
                raise ValueError("a consistency loss (consistency_weight > 0) needs 'mask' in the training batches")
            term = engine.consistency(noisy, prediction, timesteps, batchdata["mask"].to(device),
                                      engine.noise_scheduler, model.scale_factor, mask_kept)
            loss = loss + engine.consistency.weight * term
            output["consistency"] = term.item()
        (loss / window).backward()
        engine._accumulated += 1
        if engine._accumulated == window:  # last of the window (every iteration for window 1)
            engine._accumulated = 0
            if engine.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(engine.trainable_parameters(), engine.grad_clip)
            engine.optimizer.step()
            if engine.ema is not None:
                engine.ema.update_parameters(engine.ema_source())
        return {"loss": loss.item(), **output}


def make_context_fn(text_encoder: nn.Module, prompts: Sequence[str]) -> Callable[[Sequence[str]], torch.Tensor]:
    """``prompts -> context``: a cache lookup for a frozen encoder (the training prompts and the
    empty prompt are encoded once), or the encoder itself when it trains with the UNet."""
    from busmonai.networks.text_encoders import PromptEmbeddingCache

    if getattr(text_encoder, "trainable", False):
        return text_encoder.encode  # type: ignore[return-value]
    return PromptEmbeddingCache(text_encoder, [*sorted(set(prompts)), ""]).lookup


def warmup_lambda(warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_steps`` iterations, then constant (CP's schedule)."""
    return lambda step: min(1.0, (step + 1) / max(1, warmup_steps))
