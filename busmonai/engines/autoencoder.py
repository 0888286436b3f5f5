"""Training the KL autoencoder of the latent space (docs/method.md section 1).

``loss = recon(x_hat, x) + kl_weight * KL + perceptual_weight * perceptual + adv_weight * adv``:
L1 (or L2) reconstruction, ``KL = 0.5 * sum(mu^2 + sigma^2 - log sigma^2 - 1)`` averaged over the
batch, an optional perceptual term (only with local weights, see docs/design.md) and an optional
patch-adversarial term with MONAI's ``PatchDiscriminator`` (least-squares GAN, as MONAI's
generative tutorials do) switched on after ``adv_warmup_epochs``. CP and the SCMG paper fine-tune
the Stable Diffusion VAE on BUS images and freeze it; this trainer trains MONAI's
``AutoencoderKL`` from scratch or from given weights.

With ``train_encoder=False`` only the decoder learns: the frozen encoder's mean latent ``mu`` is
decoded, so the latent space (and every diffusion model trained on it) stays valid while the
decoder is sharpened. Stability AI's improved decoders for the
Stable Diffusion autoencoder (``sd-vae-ft-ema`` / ``sd-vae-ft-mse``) were made this way: only the
decoder was fine-tuned, to keep every model trained on the latents compatible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer
from monai.losses import PatchAdversarialLoss
from torch import nn

__all__ = ["AutoencoderTrainer", "ReconstructionInferer", "decoder_parameters", "for_decoder_finetuning",
           "image_as_target", "kl_divergence"]


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``0.5 * sum(mu^2 + sigma^2 - log sigma^2 - 1)`` over latent dims, averaged over the batch."""
    dims = list(range(1, mu.ndim))
    kl = 0.5 * torch.sum(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1.0, dim=dims)
    return kl.mean()


class ReconstructionInferer(Inferer):
    """Inferer for evaluators: returns only the reconstruction of ``AutoencoderKL`` (its forward
    returns ``(reconstruction, mu, sigma)``), clipped to the image range [0, 1]."""

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        return network.reconstruct(inputs).clamp(0.0, 1.0)  # type: ignore[operator]


def decoder_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The parameters that map a latent to an image: ``post_quant_conv`` and ``decoder`` of an
    ``AutoencoderKL`` (the optimizer's parameters when only the decoder is fine-tuned).

    Raises:
        ValueError: ``network`` has no ``decoder`` (e.g. the space-to-depth view, nothing to train).
    """
    if not isinstance(getattr(network, "decoder", None), nn.Module):
        raise ValueError(f"{type(network).__name__} has no 'decoder' to fine-tune; use an AutoencoderKL checkpoint")
    parts = [network.decoder, getattr(network, "post_quant_conv", None)]
    return [p for part in parts if isinstance(part, nn.Module) for p in part.parameters()]


def for_decoder_finetuning(network: nn.Module, init_ckpt: str | Path | None) -> nn.Module:
    """``network`` with the weights of the trained autoencoder whose decoder is to be fine-tuned.

    Raises:
        BusmonaiInputError: no ``init_ckpt`` (a decoder fine-tuned behind a random encoder would
            serve no diffusion model), or a checkpoint that is not an autoencoder's.
    """
    from busmonai.errors import BusmonaiInputError
    from busmonai.networks.described import initialised

    if not init_ckpt or not Path(init_ckpt).is_file():
        raise BusmonaiInputError(
            f"decoder fine-tuning needs 'init_ckpt', the model.pt of a trained autoencoder (got {init_ckpt!r}); "
            "pass --init_ckpt runs/autoencoder/model.pt"
        )
    return initialised(network, init_ckpt, "init_ckpt", "autoencoder")


def image_as_target(batchdata: dict[str, torch.Tensor], device: torch.device | str | None = None,
                    non_blocking: bool = False, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepare_batch`` for autoencoders: the image is both input and target."""
    image = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
    return image, image


class AutoencoderTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration trains an ``AutoencoderKL`` (and its discriminator).

    Args:
        device, max_epochs, train_data_loader, network, optimizer, loss_function: as for
            ``SupervisedTrainer``; ``loss_function(recon, image)`` is the reconstruction loss.
        kl_weight: weight of the KL term.
        discriminator: a ``PatchDiscriminator``, or None for no adversarial term.
        d_optimizer: its optimizer (required with ``discriminator``).
        adv_weight: weight of the generator's adversarial term.
        adv_warmup_epochs: epochs before the adversarial terms switch on.
        perceptual_loss: an optional perceptual loss module (with local weights).
        perceptual_weight: its weight.
        train_encoder: False to fine-tune the decoder alone: the frozen encoder's ``mu`` is decoded
            without gradients (the optimizer should hold :func:`decoder_parameters` only).
        **kwargs: passed to ``SupervisedTrainer`` (``train_handlers``, ``amp``, ...).

    The iteration output holds ``image``, ``pred`` (reconstruction), ``loss`` (total generator
    loss), ``recon_loss``, ``kl_loss``, ``adv_loss`` and ``d_loss`` (floats).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Any,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable[..., torch.Tensor],
        kl_weight: float = 1e-6,
        discriminator: nn.Module | None = None,
        d_optimizer: torch.optim.Optimizer | None = None,
        adv_weight: float = 0.0,
        adv_warmup_epochs: int = 0,
        perceptual_loss: nn.Module | None = None,
        perceptual_weight: float = 0.0,
        prepare_batch: PrepareBatch | Callable = image_as_target,
        train_encoder: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            prepare_batch=prepare_batch,
            **kwargs,
        )
        if discriminator is not None and d_optimizer is None:
            raise ValueError("AutoencoderTrainer: 'discriminator' needs 'd_optimizer'")
        self.kl_weight = float(kl_weight)
        self.discriminator = discriminator if adv_weight > 0 else None
        self.d_optimizer = d_optimizer
        self.adv_weight = float(adv_weight)
        self.adv_warmup_epochs = int(adv_warmup_epochs)
        self.adv_loss = PatchAdversarialLoss(criterion="least_squares")
        self.perceptual_loss = perceptual_loss
        self.perceptual_weight = float(perceptual_weight)
        self.train_encoder = bool(train_encoder)

    def _adversarial_on(self, engine: AutoencoderTrainer) -> bool:
        return engine.discriminator is not None and engine.state.epoch > engine.adv_warmup_epochs

    def _iteration(self, engine: AutoencoderTrainer, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        images, _ = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        if engine.train_encoder:
            recon, mu, sigma = engine.network(images)
        else:
            with torch.no_grad():
                mu, sigma = engine.network.encode(images)  # type: ignore[operator]
            recon = engine.network.decode(mu)  # type: ignore[operator]
        recon_loss = engine.loss_function(recon, images)
        kl_loss = kl_divergence(mu, sigma)
        loss = recon_loss + engine.kl_weight * kl_loss
        if engine.perceptual_loss is not None and engine.perceptual_weight > 0:
            loss = loss + engine.perceptual_weight * engine.perceptual_loss(recon, images)
        adversarial = self._adversarial_on(engine)
        adv_loss = torch.zeros((), device=images.device)
        if adversarial:
            logits_fake = engine.discriminator(recon.contiguous())[-1]  # type: ignore[misc]
            adv_loss = engine.adv_loss(logits_fake, target_is_real=True, for_discriminator=False)
            loss = loss + engine.adv_weight * adv_loss
        loss.backward()
        engine.optimizer.step()

        d_loss = torch.zeros((), device=images.device)
        if adversarial:
            engine.d_optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
            logits_fake = engine.discriminator(recon.detach().contiguous())[-1]  # type: ignore[misc]
            logits_real = engine.discriminator(images.contiguous())[-1]  # type: ignore[misc]
            d_loss = 0.5 * (
                engine.adv_loss(logits_fake, target_is_real=False, for_discriminator=True)
                + engine.adv_loss(logits_real, target_is_real=True, for_discriminator=True)
            )
            d_loss.backward()
            engine.d_optimizer.step()  # type: ignore[union-attr]
        return {
            "image": images,
            "pred": recon.detach(),
            "loss": loss.item(),
            "recon_loss": recon_loss.item(),
            "kl_loss": kl_loss.item(),
            "adv_loss": adv_loss.item(),
            "d_loss": d_loss.item(),
        }


def reconstruction_rows(network: nn.Module, images: torch.Tensor) -> Sequence[torch.Tensor]:
    """Preview rows for :class:`busmonai.engines.handlers.PreviewGrid`: inputs, then reconstructions."""
    network.eval()
    with torch.no_grad():
        return [images, network.reconstruct(images).clamp(0, 1)]  # type: ignore[operator]


def perceptual_loss(weights_path: str | None, device: torch.device | str = "cpu") -> nn.Module:
    """MONAI ``PerceptualLoss`` (torchvision ResNet-50 features) from LOCAL weights only.

    MONAI's default perceptual networks download weights at run time, which this project never
    does (docs/design.md); the term is therefore off unless ``perceptual_weights`` names a local
    state-dict file.

    Raises:
        BusmonaiInputError: no path, or a path that does not exist.
    """
    from monai.losses import PerceptualLoss

    from busmonai.errors import BusmonaiInputError

    if not weights_path or not Path(weights_path).is_file():
        raise BusmonaiInputError(
            f"perceptual_weight > 0 needs 'perceptual_weights', a local torchvision ResNet-50 state dict "
            f"(got {weights_path!r}); set --perceptual_weight 0 or give the file"
        )
    loss = PerceptualLoss(
        spatial_dims=2, network_type="resnet50", pretrained=True, pretrained_path=str(weights_path),
        pretrained_state_dict_key=None,
    )
    return loss.to(device)


@torch.no_grad()
def reconstruct_datalist(network: nn.Module, items: Sequence[dict[str, Any]], image_size: int, output_dir: str,
                         device: torch.device | str = "cpu", n_grid: int = 8, batch_size: int = 32) -> dict[str, float]:
    """Reconstruct every image of ``items``; write ``reconstructions.png`` (inputs over
    reconstructions for the first ``n_grid``) and ``reconstructions.json`` (mean PSNR / SSIM).

    Returns:
        ``{"psnr": dB, "ssim": ..., "n": count}``.
    """
    import numpy as np
    from monai.metrics import PSNRMetric, SSIMMetric
    from tqdm import tqdm

    from busmonai.data.dataset import LoadPNGd
    from busmonai.data.imageio import save_png
    from busmonai.files import write_json_atomic
    from busmonai.visualize import grid

    load = LoadPNGd(keys="image", image_size=image_size)
    psnr, ssim = PSNRMetric(max_val=1.0), SSIMMetric(spatial_dims=2, data_range=1.0)
    network.eval()
    shown: list[np.ndarray] = []
    recon_shown: list[np.ndarray] = []
    for start in tqdm(range(0, len(items), batch_size), desc="reconstruct", unit="batch"):
        images = torch.stack([load(dict(i))["image"] for i in items[start : start + batch_size]]).to(device)
        recon = network.reconstruct(images).clamp(0, 1)  # type: ignore[operator]
        psnr(recon, images)
        ssim(recon, images)
        for image, rec in zip(images, recon):
            if len(shown) < n_grid:
                shown.append((image[0].cpu().numpy() * 255).round().astype(np.uint8))
                recon_shown.append((rec[0].cpu().numpy() * 255).round().astype(np.uint8))
    result = {"psnr": float(psnr.aggregate().item()), "ssim": float(ssim.aggregate().item()), "n": len(items)}
    out = Path(output_dir)
    save_png(grid(shown + recon_shown, ncols=len(shown), fill=255), out / "reconstructions.png")
    write_json_atomic(result, out / "reconstructions.json")
    return result
