"""Training and sampling the SCMG mask generator (docs/method.md section 4).

Losses of the SCMG paper (Medical Image Analysis 2025, "Breast Ultrasound Tumor Generation via
Mask Generator and Text-Guided Network"), each weighted by a config key of ``bundles/scmg``:

- discriminator: ``L_D = L_adv^D + L_cls^D`` with
  ``L_adv^D = 0.5 [-log D(M) - log(1 - D(M_hat))]`` (binary cross-entropy on logits) and
  ``L_cls^D`` the cross-entropy of the tumor-type head on real masks;
- generator: ``L_G = adv_weight * L_adv^G + cls_weight * L_cls^G + cur_weight * L_cur +
  rect_weight * L_rect`` with ``L_adv^G = -log D(M_hat)``, ``L_cls^G`` the type head's
  cross-entropy on generated masks (the auxiliary-classifier form of "the generated mask has
  the requested type"), ``L_cur = |kappa(M_hat) - kappa_target[k]|`` with the differentiable
  curvature of :func:`busmonai.clinical.curvature.boundary_curvature_torch` and class targets
  measured on the training masks (stored in the generator's ``curvature_targets`` buffer), and
  ``L_rect`` (:func:`rectangle_adherence_loss`, ours: the paper conditions on the rectangle but
  does not say how adherence is enforced).

Generation conditions: the fake masks of a batch get the real batch's tumor types and
rectangles; at inference, random rectangles come from :func:`sample_bboxes` (training
rectangles of the class, resampled with jitter) or are given.

Recipe switches (ours; each a key of ``bundles/scmg/configs/train.json`` whose default is the
recipe above): ``cur_class_weights`` (the curvature loss of each sample weighted by its tumor
type), ``d_branch_weights`` (the discriminator's spatial and Fourier branches weighted in the
generator's gradient, :class:`busmonai.networks.scmg.SCMGDiscriminator`), ``aug_rotate_deg`` /
``aug_scale`` (random rotations and scalings of the real masks that keep their orientation,
:class:`SCMGMaskDataset`) and ``bbox_map_blur`` (the generator's soft rectangle prior,
:class:`busmonai.networks.scmg.SCMGGenerator`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.engines import Trainer
from torch import nn
from torch.utils.data import Dataset

from busmonai.clinical.bbox import bboxes_to_maps, validate_bbox
from busmonai.clinical.curvature import boundary_curvature, boundary_curvature_torch
from busmonai.data.dataset import LoadPNGd, datalist_split
from busmonai.errors import BusmonaiInputError
from busmonai.networks.scmg import (
    BOX_BANK_SIZE, TUMOR_TYPES, binarize_masks, generate_soft_masks, sample_bboxes, tumor_type_index,
    unwrap,
)

__all__ = [
    "SCMGMaskDataset",
    "SCMGTrainer",
    "fit_priors",
    "mask_items",
    "preview_rows",
    "rectangle_adherence_loss",
]

RECT_OUTLINE_GREY = 0.5
"""Grey value (128 / 255) of the rectangle outlines drawn over preview masks."""


def mask_items(datalist: str | Path, split: str = "training", image_size: int | None = None,
               classes: Sequence[str] = TUMOR_TYPES) -> list[dict[str, Any]]:
    """Tumor items of a datalist split with ``mask``, ``label`` and ``bbox`` (see
    :func:`busmonai.data.dataset.datalist_split`)."""
    return datalist_split(datalist, split, classes, image_size, keys=("mask", "label", "bbox"))


def _orientation(box: torch.Tensor) -> int:
    """1 for a rectangle wider than tall, -1 taller than wide, 0 square."""
    return int(torch.sign((box[2] - box[0]) - (box[3] - box[1])))


class SCMGMaskDataset(Dataset):
    """Real masks, their rectangles and tumor types, loaded once; random horizontal flips and,
    optionally, small rotations and scalings.

    The rotation (uniform in ``[-rotate_deg, rotate_deg]``) and the isotropic scaling (log-uniform
    in ``[1 / (1 + scale), 1 + scale]``) turn the mask about its rectangle's centre (bilinear,
    thresholded at 0.5); the rectangle becomes the new mask's bounding box. A draw is kept only
    if the mask stays whole inside the image and keeps its orientation: a mask wider than tall
    stays wider than tall, taller than wide stays taller than wide (the class rule of
    :mod:`busmonai.clinical.ellipse`: benign wider than tall, malignant taller than wide, holds
    after augmentation for every mask that obeyed it); otherwise the mask is used unchanged.

    Args:
        items: from :func:`mask_items` (absolute ``mask`` path, ``label`` 0/1, ``bbox``).
        image_size: mask side (checked by :class:`busmonai.data.dataset.LoadPNGd`).
        flip_prob: probability of a horizontal flip (mask and rectangle together).
        rotate_deg: largest rotation in degrees (0: none, the default).
        scale: largest relative scaling (0: none, the default; 0.1: factors 0.91-1.1).

    Items: ``{"mask": (1, H, W) float {0, 1}, "bbox": (4,) float, "label": long}``.

    Raises:
        BusmonaiInputError: a wrongly sized mask, an invalid ``bbox`` or an unknown ``label``.
    """

    def __init__(self, items: Sequence[Mapping[str, Any]], image_size: int, flip_prob: float = 0.5,
                 rotate_deg: float = 0.0, scale: float = 0.0) -> None:
        load = LoadPNGd(keys="mask", image_size=image_size)
        self.masks = [load.load(item["mask"], binary=True) for item in items]
        self.bboxes: list[torch.Tensor] = []
        for item in items:
            try:
                box = validate_bbox(item["bbox"], image_size, image_size)
            except BusmonaiInputError as err:
                raise BusmonaiInputError(f"{item['mask']}: bad datalist 'bbox' ({err})") from err
            self.bboxes.append(torch.tensor(box, dtype=torch.float32))
        self.labels = [tumor_type_index(int(item["label"])) for item in items]
        self.image_size = image_size
        self.flip_prob = float(flip_prob)
        if not (0 <= rotate_deg <= 90 and 0 <= scale < 1):
            raise BusmonaiInputError(f"SCMG augmentation needs 0 <= aug_rotate_deg <= 90 and 0 <= aug_scale < 1, "
                                     f"got {rotate_deg} and {scale}")
        self.rotate_deg = float(rotate_deg)
        self.scale = float(scale)

    def _rotate_scale(self, mask: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A random rotation and scaling about the rectangle's centre, or the input when the draw
        cuts the mask at the image border or changes its orientation (class docstring)."""
        u = torch.rand(2) * 2.0 - 1.0
        angle = math.radians(self.rotate_deg) * float(u[0])
        factor = math.exp(math.log1p(self.scale) * float(u[1]))
        size = self.image_size
        cx, cy = float(box[0] + box[2]) / size - 1.0, float(box[1] + box[3]) / size - 1.0  # normalised centre
        cos, sin = math.cos(angle) / factor, math.sin(angle) / factor  # output -> input coordinates
        theta = torch.tensor([[cos, -sin, cx - cos * cx + sin * cy], [sin, cos, cy - sin * cx - cos * cy]])
        grid = F.affine_grid(theta[None], [1, 1, size, size], align_corners=False)
        moved = (F.grid_sample(mask[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0] > 0.5)
        region = moved[0]
        if not region.any() or bool(region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any()):
            return mask, box
        rows, cols = region.any(1).nonzero()[:, 0], region.any(0).nonzero()[:, 0]
        new = torch.stack([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]).to(box.dtype)
        if _orientation(new) != _orientation(box):
            return mask, box
        return moved.to(mask.dtype), new

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        mask, box = self.masks[index], self.bboxes[index]
        if self.flip_prob > 0 and float(torch.rand(())) < self.flip_prob:
            mask = mask.flip(-1)
            box = torch.stack([self.image_size - box[2], box[1], self.image_size - box[0], box[3]])
        if self.rotate_deg > 0 or self.scale > 0:
            mask, box = self._rotate_scale(mask, box)
        return {"mask": mask, "bbox": box, "label": torch.tensor(self.labels[index], dtype=torch.long)}


def fit_priors(items: Sequence[Mapping[str, Any]], image_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-specific curvature targets and the rectangle bank of the training masks.

    Returns:
        ``(targets (T,), bank (T, BOX_BANK_SIZE, 4))``: the mean
        :func:`~busmonai.clinical.curvature.boundary_curvature` of each type's masks (at
        ``image_size``, the resolution the generator works at), and each type's rectangles as
        fractions of the image side, resampled with replacement to ``BOX_BANK_SIZE``.

    Raises:
        BusmonaiInputError: a tumor type without any training mask.
    """
    load = LoadPNGd(keys="mask", image_size=image_size)
    rng = np.random.default_rng(seed)
    targets = torch.zeros(len(TUMOR_TYPES))
    bank = torch.zeros(len(TUMOR_TYPES), BOX_BANK_SIZE, 4)
    for k, name in enumerate(TUMOR_TYPES):
        chosen = [item for item in items if int(item["label"]) == k]
        if not chosen:
            raise BusmonaiInputError(f"the training split has no {name} masks; SCMG needs both tumor types")
        values = [boundary_curvature(load.load(item["mask"], binary=True)[0].numpy()) for item in chosen]
        targets[k] = float(np.mean(values))
        boxes = np.array([item["bbox"] for item in chosen], dtype=np.float32) / image_size
        bank[k] = torch.from_numpy(boxes[rng.integers(0, len(boxes), BOX_BANK_SIZE)])
    return targets, bank


def rectangle_adherence_loss(masks: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """How far soft masks are from having exactly their rectangle as bounding box (ours).

    Two differentiable terms, each zero for a real mask with its own box:

    - *leak*: the mask mass outside the rectangle, relative to the rectangle's area;
    - *fill*: over the rectangle's columns (rows), the mean of ``1 - max`` of the mask along
      that column (row) inside the rectangle: every column and row of the box should hold a
      lesion pixel, so that the mask's box spans the whole rectangle.

    Args:
        masks: ``(B, 1, H, W)`` soft masks in ``[0, 1]``.
        maps: ``(B, 1, H, W)`` rectangle maps (1 inside).

    Returns:
        ``(B,)`` per-sample loss ``leak + fill``.
    """
    area = maps.flatten(1).sum(1).clamp_min(1.0)
    leak = (masks * (1.0 - maps)).flatten(1).sum(1) / area
    inside = masks * maps
    fills = []
    for dim in (2, 3):  # column maxima (over rows), then row maxima (over columns)
        reach = inside.amax(dim=dim).flatten(1)
        span = maps.amax(dim=dim).flatten(1)
        fills.append(((1.0 - reach) * span).sum(1) / span.sum(1).clamp_min(1.0))
    return leak + 0.5 * (fills[0] + fills[1])


class SCMGTrainer(Trainer):
    """Ignite trainer of the SCMG generator and its dual-branch discriminator.

    MONAI's ``GanTrainer`` feeds the generator a single latent tensor; SCMG's generator also
    takes the tumor type and the rectangle map, so this ``Trainer`` subclass has its own
    iteration: one discriminator step, then one generator step, on every batch.

    Args:
        device: torch device.
        max_epochs: epochs to run.
        train_data_loader: yields ``{"mask", "bbox", "label"}`` batches
            (:class:`SCMGMaskDataset`).
        generator: :class:`busmonai.networks.scmg.SCMGGenerator` (possibly DDP-wrapped), whose
            ``curvature_targets`` buffer holds the class targets.
        discriminator: :class:`busmonai.networks.scmg.SCMGDiscriminator` (possibly DDP-wrapped).
        g_optimizer: optimizer of the generator (the paper: Adam, lr 2e-4).
        d_optimizer: optimizer of the discriminator (the paper: Adam, lr 1e-4).
        adv_weight: weight of ``L_adv^G``.
        cls_weight: weight of ``L_cls^G``.
        cur_weight: weight of ``L_cur`` (0 for the ablation without the curvature loss).
        rect_weight: weight of ``L_rect``.
        cur_class_weights: per tumor type, a factor on each sample's ``L_cur`` (None, the
            default: 1 for every type, the paper's loss).
        d_branch_weights: ``(spatial, Fourier)`` weights of the discriminator's branches in the
            gradient of ``L_adv^G`` and ``L_cls^G`` (None, the default: ``(1, 1)``; the loss
            values and the discriminator's own training are unchanged).
        mode_seeking_weight: weight of :func:`mode_seeking_loss` (0, the default, the paper's
            losses; above 0 each iteration also generates a second mask per sample from other noise).
        generator_ema: an EMA copy of the generator (:func:`busmonai.engines.ema.ema_model`),
            updated after every generator step, or None (the paper: the last weights).
        seed: seed of the trainer's noise generator.
        train_handlers: Ignite handlers to attach.
        **kwargs: passed to ``monai.engines.Trainer``.

    The iteration output holds floats ``loss`` (= ``g_loss``), ``g_loss``, ``d_loss``,
    ``adv_loss``, ``cls_loss``, ``cur_loss``, ``rect_loss``, ``ms_loss`` (0 when the term is off),
    ``kappa`` (mean generated curvature) and ``d_type_acc`` (type-head accuracy on the real masks).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Any,
        generator: nn.Module,
        discriminator: nn.Module,
        g_optimizer: torch.optim.Optimizer,
        d_optimizer: torch.optim.Optimizer,
        adv_weight: float = 1.0,
        cls_weight: float = 1.0,
        cur_weight: float = 10.0,
        rect_weight: float = 0.3,
        cur_class_weights: Sequence[float] | None = None,
        d_branch_weights: Sequence[float] | None = None,
        mode_seeking_weight: float = 0.0,
        generator_ema: Any | None = None,
        seed: int = 0,
        train_handlers: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("decollate", False)
        super().__init__(device=device, max_epochs=max_epochs, data_loader=train_data_loader,
                         handlers=train_handlers, **kwargs)
        if not float(mode_seeking_weight) >= 0:
            raise BusmonaiInputError(f"mode_seeking_weight must be >= 0, got {mode_seeking_weight}")
        self.mode_seeking_weight = float(mode_seeking_weight)
        self.generator = generator
        self.generator_ema = generator_ema
        self.discriminator = discriminator
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.adv_weight = float(adv_weight)
        self.cls_weight = float(cls_weight)
        self.cur_weight = float(cur_weight)
        self.rect_weight = float(rect_weight)
        self.cur_class_weights = None if cur_class_weights is None else torch.tensor(
            [float(w) for w in cur_class_weights])
        branches = None if d_branch_weights is None else tuple(float(w) for w in d_branch_weights)
        if branches is not None and (len(branches) != 2 or min(branches) < 0):
            raise BusmonaiInputError(f"d_branch_weights must be two weights >= 0 (spatial, Fourier), got {d_branch_weights}")
        if self.cur_class_weights is not None and float(self.cur_class_weights.min()) < 0:
            raise BusmonaiInputError(f"cur_class_weights must be >= 0, got {cur_class_weights}")
        self.d_branch_weights = None if branches == (1.0, 1.0) else branches
        self.noise = torch.Generator().manual_seed(int(seed))

    def generator_losses(self, fake: torch.Tensor, maps: torch.Tensor, types: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generator's loss terms on generated masks ``fake`` (graph kept for backward)."""
        if self.d_branch_weights is None:
            adv_logits, type_logits = self.discriminator(fake, maps)
        else:
            adv_logits, type_logits = self.discriminator(fake, maps, branch_weights=self.d_branch_weights)
        all_targets = unwrap(self.generator).curvature_targets
        targets = all_targets[types]
        kappa = boundary_curvature_torch(fake)
        cur = (kappa - targets).abs()
        if self.cur_class_weights is not None:
            if self.cur_class_weights.numel() != all_targets.numel():
                raise BusmonaiInputError(f"cur_class_weights needs one weight per tumor type ({all_targets.numel()}), "
                                         f"got {self.cur_class_weights.tolist()}")
            cur = cur * self.cur_class_weights.to(cur)[types]
        terms = {
            "adv_loss": F.binary_cross_entropy_with_logits(adv_logits, torch.ones_like(adv_logits)),
            "cls_loss": F.cross_entropy(type_logits, types),
            "cur_loss": cur.mean(),
            "rect_loss": rectangle_adherence_loss(fake, maps).mean(),
        }
        terms["g_loss"] = (self.adv_weight * terms["adv_loss"] + self.cls_weight * terms["cls_loss"]
                           + self.cur_weight * terms["cur_loss"] + self.rect_weight * terms["rect_loss"])
        terms["kappa"] = kappa.detach().mean()
        return terms

    def _iteration(self, engine: SCMGTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        device = engine.state.device
        real = batchdata["mask"].to(device)
        types = batchdata["label"].to(device).long()
        size = real.shape[-1]
        maps = bboxes_to_maps(batchdata["bbox"].to(device), size, size)
        latent_dim = unwrap(engine.generator).latent_dim
        z = torch.randn(real.shape[0], latent_dim, generator=engine.noise).to(device)
        engine.generator.train()
        engine.discriminator.train()
        fake = engine.generator(z, types, maps)

        # discriminator: real and generated masks in one forward (one DDP reduction)
        engine.d_optimizer.zero_grad(set_to_none=True)
        adv_logits, type_logits = engine.discriminator(torch.cat([real, fake.detach()]), torch.cat([maps, maps]))
        labels = torch.cat([torch.ones_like(adv_logits[: len(real)]), torch.zeros_like(adv_logits[len(real):])])
        d_adv = F.binary_cross_entropy_with_logits(adv_logits, labels)  # = 0.5 [-log D(M) - log(1 - D(M_hat))]
        d_cls = F.cross_entropy(type_logits[: len(real)], types)
        d_loss = d_adv + d_cls
        d_loss.backward()
        engine.d_optimizer.step()

        # generator
        engine.g_optimizer.zero_grad(set_to_none=True)
        terms = engine.generator_losses(fake, maps, types)
        if engine.mode_seeking_weight > 0:  # a second mask per sample, same type and rectangle, other noise
            z_other = torch.randn(real.shape[0], latent_dim, generator=engine.noise).to(device)
            terms["ms_loss"] = mode_seeking_loss(fake, engine.generator(z_other, types, maps), z, z_other)
            terms["g_loss"] = terms["g_loss"] + engine.mode_seeking_weight * terms["ms_loss"]
        else:
            terms["ms_loss"] = torch.zeros(())
        terms["g_loss"].backward()
        engine.g_optimizer.step()
        if engine.generator_ema is not None:
            engine.generator_ema.update_parameters(unwrap(engine.generator))
        accuracy = (type_logits[: len(real)].argmax(1) == types).float().mean()
        out = {key: float(value.detach()) for key, value in terms.items()}
        out.update(loss=out["g_loss"], d_loss=float(d_loss.detach()), d_type_acc=float(accuracy))
        return out


def mode_seeking_loss(fake: torch.Tensor, other: torch.Tensor, z: torch.Tensor, z_other: torch.Tensor,
                      eps: float = 1e-5) -> torch.Tensor:
    """Mode-seeking regulariser (Mao et al., "Mode Seeking Generative Adversarial Networks for
    Diverse Image Synthesis", CVPR 2019): two masks generated for the same type and rectangle from
    noises ``z`` and ``z_other`` should differ in proportion to their noises,

    ``L_ms = 1 / (mean|G(z) - G(z')| / mean|z - z'| + eps)``,

    so a generator that ignores its noise (one mask per rectangle) pays for it.
    """
    ratio = (fake - other).abs().mean() / (z - z_other).abs().mean().clamp_min(eps)
    return 1.0 / (ratio + eps)


@torch.no_grad()


def _outline(maps: torch.Tensor) -> torch.Tensor:
    """One-pixel inner outline of ``(B, 1, H, W)`` rectangle maps."""
    eroded = -F.max_pool2d(-maps, kernel_size=3, stride=1, padding=1)
    return (maps - eroded).clamp(0, 1)


@torch.no_grad()
def preview_rows(generator: nn.Module, n_per_type: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """Preview rows for :class:`busmonai.engines.handlers.PreviewGrid`: per tumor type (benign
    row, then malignant), generated masks for fixed noise and rectangles drawn from the
    training statistics, with each rectangle outlined in grey 128."""
    model = unwrap(generator)
    size = model.image_size
    rows = []
    for k in range(model.num_types):
        noise = torch.Generator().manual_seed(int(seed) + k)
        types = torch.full((n_per_type,), k, dtype=torch.long)
        boxes = sample_bboxes(model.box_bank, types, size, noise)
        soft = generate_soft_masks(model, types, boxes, seed=seed + k)
        binary = torch.from_numpy(np.stack(binarize_masks(soft))).float()[:, None]
        outline = _outline(bboxes_to_maps(boxes, size, size))
        rows.append(torch.where(outline > 0, torch.full_like(binary, RECT_OUTLINE_GREY), binary))
    return rows
