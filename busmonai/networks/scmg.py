"""SCMG: the semantic-curvature mask generator and its dual-branch discriminator.

The SCMG paper (Medical Image Analysis 2025, "Breast Ultrasound Tumor Generation via Mask
Generator and Text-Guided Network"; docs/method.md section 4) draws a lesion mask ``M = G(z, k, s)``
from a noise vector ``z``, a tumor type ``k`` (benign / malignant) and a bounding-rectangle map
``s``. No public code exists; this is an implementation of the paper's description:

- **Generator** (:class:`SCMGGenerator`): a linear layer projects ``z`` to a feature map
  ``F0`` of ``C0 x H0 x W0``; the embedded tumor type is broadcast spatially and concatenated,
  and the two are fused by a 3x3 convolution and a ReLU (ours, see below); ``N`` blocks of
  nearest-neighbour upsampling x2, one SPADE normalisation
  ``gamma(s_n) * IN(F) + beta(s_n)`` modulated by the rectangle map resized to the block's
  resolution (MONAI's :class:`~monai.networks.blocks.spade_norm.SPADE`, ``label_nc=1``), ReLU
  and a 3x3 convolution; a final 3x3 convolution and a sigmoid.
- **Discriminator** (:class:`SCMGDiscriminator`): a spatial branch (strided convolutions with
  instance norm and LeakyReLU) and a frequency branch (the centred log-magnitude Fourier
  spectrum ``log(1 + |FFT2(M)|)`` through a convolutional encoder); their pooled features are
  concatenated and feed a real/fake head (one logit) and a tumor-type head (one logit per
  type). The rectangle map is an extra input channel of the spatial branch, so that the
  discriminator can judge how well a mask fills its rectangle.

Why the fusion layer: the broadcast type channels are constant in space, and the instance
normalisation inside every SPADE block subtracts each channel's spatial mean, so a type map
concatenated straight before the first SPADE is erased (the output would not depend on the
type). A linear convolution alone does not help (its type contribution is again a per-channel
constant); a convolution followed by a ReLU mixes the type nonlinearly into the spatially
varying features of ``z``, which survives the normalisation.

The generator also carries, as buffers saved in its state dict, what inference needs without
the training data: its own hyper-parameters (:meth:`SCMGGenerator.from_state_dict`), the
class-specific curvature targets of the curvature loss, a bank of normalised training
rectangles per class from which random rectangles are drawn
(:func:`sample_bboxes`), and ``map_blur``.

Recipe switches (ours, not in the paper; the defaults are the paper's recipe):

- ``map_blur`` of the generator: the rectangle map reaches the SPADE blocks as a soft prior,
  Gaussian-blurred with a standard deviation of ``map_blur`` times the image side and rescaled
  to a peak of 1 (:func:`soften_rectangle_maps`), instead of the hard box; 0 keeps the hard box.
  The input stays the hard map, so inference and ``busmonai masks`` need no change, and the
  value is a buffer of the checkpoint (checkpoints without it load as 0).
- ``branch_weights`` of :meth:`SCMGDiscriminator.forward`: the weights of the spatial and the
  Fourier branch in the *gradient* that reaches the generator (the logits are unchanged, so the
  discriminator trains as in the paper); the trainer passes them in its generator step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks.spade_norm import SPADE
from scipy import ndimage
from torch import nn

from busmonai.clinical.bbox import bboxes_to_maps, validate_bbox
from busmonai.clinical.classes import TUMOR_CLASSES
from busmonai.errors import BusmonaiInputError

__all__ = [
    "BOX_BANK_SIZE",
    "TUMOR_TYPES",
    "SCMGDiscriminator",
    "SCMGGenerator",
    "soften_rectangle_maps",
    "tumor_type_index",
    "validate_bbox_maps",
    "validate_types",
]

TUMOR_TYPES: tuple[str, ...] = TUMOR_CLASSES
"""Tumor type names; the type index ``k`` is the position in this tuple (the datalist ``label``)."""
BOX_BANK_SIZE = 256
"""Rectangles per class kept in the generator's ``box_bank`` buffer (resampled training boxes)."""
MAX_CHANNEL_MULT = 4
"""The widest generator block has ``base_channels * MAX_CHANNEL_MULT`` channels."""
LEAKY_SLOPE = 0.2
"""Negative slope of the discriminator's LeakyReLU."""
_ARCH_FIELDS = ("latent_dim", "num_types", "base_channels", "image_size", "start_size", "type_embed_dim",
                "spade_hidden")


def tumor_type_index(name: str | int) -> int:
    """Index of a tumor type given by name (``benign``, ``malignant``) or index.

    Raises:
        BusmonaiInputError: an unknown name or index, listing the valid names.
    """
    if isinstance(name, str):
        key = name.strip().lower()
        if key in TUMOR_TYPES:
            return TUMOR_TYPES.index(key)
    elif isinstance(name, int) and not isinstance(name, bool) and 0 <= name < len(TUMOR_TYPES):
        return int(name)
    raise BusmonaiInputError(
        f"unknown tumor type {name!r}; valid types are {', '.join(repr(t) for t in TUMOR_TYPES)} "
        f"(or their indices 0..{len(TUMOR_TYPES) - 1})"
    )


def validate_types(types: torch.Tensor, num_types: int) -> torch.Tensor:
    """Check a ``(B,)`` integer tensor of tumor-type indices.

    Raises:
        BusmonaiInputError: wrong shape or dtype, or an index outside ``[0, num_types)``.
    """
    if types.ndim != 1 or types.is_floating_point() or types.dtype == torch.bool:
        raise BusmonaiInputError(f"tumor types must be a (B,) integer tensor, got {tuple(types.shape)} {types.dtype}")
    if types.numel() and (int(types.min()) < 0 or int(types.max()) >= num_types):
        bad = int(types.max()) if int(types.max()) >= num_types else int(types.min())
        names = ", ".join(f"{i} = {n!r}" for i, n in enumerate(TUMOR_TYPES[:num_types]))
        raise BusmonaiInputError(f"unknown tumor type index {bad}; valid types are {names}")
    return types


def validate_bbox_maps(maps: torch.Tensor, batch: int, image_size: int) -> torch.Tensor:
    """Check ``(B, 1, H, W)`` rectangle maps: right shape and a non-empty rectangle in each.

    Raises:
        BusmonaiInputError: wrong shape, or a map with no pixel inside its rectangle (zero
            area, or a rectangle entirely outside the image).
    """
    expected = (batch, 1, image_size, image_size)
    if tuple(maps.shape) != expected:
        raise BusmonaiInputError(f"rectangle maps must have shape {expected}, got {tuple(maps.shape)}")
    empty = (maps.detach().flatten(1).amax(1) <= 0).nonzero().flatten().tolist()
    if empty:
        raise BusmonaiInputError(
            f"rectangle map(s) {empty[:5]} are empty: a rectangle of zero area or outside the "
            f"{image_size} x {image_size} image; give 0 <= x0 < x1 <= {image_size} and 0 <= y0 < y1 <= {image_size}"
        )
    return maps


def soften_rectangle_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Rectangle maps ``(B, 1, H, W)`` blurred by a Gaussian of ``sigma`` pixels and rescaled to a peak of 1.

    Zero padding (outside the image is outside every rectangle); the kernel is truncated at
    ``3 sigma``. ``sigma <= 0`` returns ``maps`` unchanged (the hard box).
    """
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.conv2d(maps, kernel.view(1, 1, 1, -1), padding=(0, radius))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return out / out.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)


def _scale_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``weight`` in the backward pass."""
    if weight == 1.0:
        return x
    return x * weight + x.detach() * (1.0 - weight)


def _resize_map(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Rectangle map at a block's resolution: area average (a soft border at coarse levels)."""
    if maps.shape[-1] == size:
        return maps
    if maps.shape[-1] > size:
        return F.adaptive_avg_pool2d(maps, size)
    return F.interpolate(maps, size=(size, size), mode="nearest")


class SCMGGenerator(nn.Module):
    """``M = G(z, k, s)``: a soft lesion mask from noise, tumor type and bounding-rectangle map.

    Args:
        latent_dim: size of ``z``.
        num_types: number of tumor types (2: benign, malignant).
        base_channels: channels of the last block; earlier blocks have up to
            ``MAX_CHANNEL_MULT`` times as many (``C0`` is the first block's width).
        image_size: output side ``H = W``; must be ``start_size * 2**N`` for some ``N >= 1``.
        start_size: side ``H0 = W0`` of the projected feature map ``F0`` (4 or 8).
        type_embed_dim: size of the tumor-type embedding concatenated to ``F0``.
        spade_hidden: hidden channels of each SPADE block's modulation network.
        map_blur: soft rectangle prior: Gaussian blur of the rectangle map before the SPADE
            blocks, standard deviation as a fraction of ``image_size`` (0: the hard box; see
            the module docstring). Stored in the ``map_blur`` buffer.

    Forward:
        ``(z (B, latent_dim), types (B,) long, bbox_maps (B, 1, H, W)) -> (B, 1, H, W)`` in
        ``[0, 1]``.
    """

    def __init__(self, latent_dim: int = 64, num_types: int = 2, base_channels: int = 32, image_size: int = 64,
                 start_size: int = 4, type_embed_dim: int = 16, spade_hidden: int = 32,
                 map_blur: float = 0.0) -> None:
        super().__init__()
        n_blocks = math.log2(image_size / start_size) if image_size > 0 and start_size > 0 else -1
        if n_blocks < 1 or n_blocks != int(n_blocks):
            raise BusmonaiInputError(
                f"SCMG image_size {image_size} must be start_size {start_size} times a power of two (>= 2)"
            )
        if min(latent_dim, num_types, base_channels, type_embed_dim, spade_hidden) < 1:
            raise BusmonaiInputError("SCMG sizes (latent_dim, num_types, base_channels, ...) must be positive")
        if not math.isfinite(map_blur) or map_blur < 0:
            raise BusmonaiInputError(f"SCMG map_blur must be >= 0 (0: hard rectangle map), got {map_blur}")
        self.latent_dim, self.num_types, self.image_size = latent_dim, num_types, image_size
        self.start_size = start_size
        n = int(n_blocks)
        widths = [base_channels * min(MAX_CHANNEL_MULT, 2 ** (n - 1 - i)) for i in range(n)]
        self.c0 = widths[0]
        self.project = nn.Linear(latent_dim, self.c0 * start_size * start_size)
        self.type_embed = nn.Embedding(num_types, type_embed_dim)
        self.fuse = nn.Conv2d(self.c0 + type_embed_dim, self.c0, kernel_size=3, padding=1)
        in_ch = self.c0
        self.spades = nn.ModuleList()
        self.convs = nn.ModuleList()
        for width in widths:
            self.spades.append(SPADE(label_nc=1, norm_nc=in_ch, kernel_size=3, spatial_dims=2,
                                     hidden_channels=spade_hidden, norm="INSTANCE"))
            self.convs.append(nn.Conv2d(in_ch, width, kernel_size=3, padding=1))
            in_ch = width
        self.out = nn.Conv2d(in_ch, 1, kernel_size=3, padding=1)
        arch = (latent_dim, num_types, base_channels, image_size, start_size, type_embed_dim, spade_hidden)
        self.register_buffer("arch", torch.tensor(arch, dtype=torch.int64))
        self.register_buffer("curvature_targets", torch.zeros(num_types))
        self.register_buffer("box_bank", torch.zeros(num_types, BOX_BANK_SIZE, 4))
        self.register_buffer("map_blur", torch.tensor(float(map_blur)))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        """Checkpoints written before the soft rectangle prior have no ``map_blur``: the hard box (0)."""
        state_dict.setdefault(prefix + "map_blur", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> SCMGGenerator:
        """Build a generator with the hyper-parameters recorded in ``state['arch']`` and load it.

        Raises:
            BusmonaiInputError: ``state`` is not an SCMG generator state dict.
        """
        if "arch" not in state or tuple(state["arch"].shape) != (len(_ARCH_FIELDS),):
            raise BusmonaiInputError("not an SCMG generator checkpoint (no 'arch' entry); train bundles/scmg")
        kwargs = dict(zip(_ARCH_FIELDS, (int(v) for v in state["arch"].tolist())))
        generator = cls(**kwargs)
        generator.load_state_dict(state)
        return generator

    def set_priors(self, curvature_targets: Sequence[float] | torch.Tensor, box_bank: torch.Tensor) -> SCMGGenerator:
        """Store the class-specific curvature targets ``(num_types,)`` and the normalised
        rectangle bank ``(num_types, BOX_BANK_SIZE, 4)`` (fractions of the image side)."""
        targets = torch.as_tensor(curvature_targets, dtype=torch.float32)
        if tuple(targets.shape) != (self.num_types,) or tuple(box_bank.shape) != tuple(self.box_bank.shape):
            raise BusmonaiInputError(
                f"SCMG priors need {self.num_types} curvature targets and a box bank of shape "
                f"{tuple(self.box_bank.shape)}, got {tuple(targets.shape)} and {tuple(box_bank.shape)}"
            )
        self.curvature_targets.copy_(targets)
        self.box_bank.copy_(box_bank.to(self.box_bank))
        return self

    def forward(self, z: torch.Tensor, types: torch.Tensor, bbox_maps: torch.Tensor) -> torch.Tensor:
        """Generate soft masks (see the class docstring).

        Raises:
            BusmonaiInputError: wrong shapes, unknown tumor types, empty rectangle maps.
        """
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise BusmonaiInputError(f"z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        batch = z.shape[0]
        validate_types(types, self.num_types)
        if types.shape[0] != batch:
            raise BusmonaiInputError(f"got {types.shape[0]} tumor types for {batch} noise vectors")
        validate_bbox_maps(bbox_maps, batch, self.image_size)
        h = self.project(z).view(batch, self.c0, self.start_size, self.start_size)
        k = self.type_embed(types)[:, :, None, None].expand(-1, -1, self.start_size, self.start_size)
        h = F.relu(self.fuse(torch.cat([h, k], dim=1)))
        prior = soften_rectangle_maps(bbox_maps, float(self.map_blur) * self.image_size)
        for spade, conv in zip(self.spades, self.convs):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = conv(F.relu(spade(h, _resize_map(prior, h.shape[-1]))))
        return torch.sigmoid(self.out(h))


def fourier_magnitude(masks: torch.Tensor) -> torch.Tensor:
    """Centred log-magnitude spectrum ``log(1 + |FFT2(M)|)``, scaled to about ``[0, 1]``
    (divided by ``log(1 + H * W)``, the value of the DC term of an all-ones mask)."""
    h, w = masks.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fft2(masks.float(), norm="backward"), dim=(-2, -1))
    return torch.log1p(spectrum.abs()) / math.log1p(h * w)


def _encoder(in_ch: int, widths: Sequence[int], norm_first: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers.append(nn.Conv2d(in_ch, width, kernel_size=4, stride=2, padding=1))
        if i > 0 or norm_first:
            layers.append(nn.InstanceNorm2d(width, affine=True))
        layers.append(nn.LeakyReLU(LEAKY_SLOPE))
        in_ch = width
    return nn.Sequential(*layers)


class SCMGDiscriminator(nn.Module):
    """Dual-branch discriminator: spatial and Fourier-magnitude branches, real/fake and type heads.

    Args:
        num_types: number of tumor types.
        base_channels: width of the first convolution of each branch (doubling per level up to
            ``MAX_CHANNEL_MULT`` times).
        image_size: input side (the encoders downsample by 2 until about 4 px).
        num_layers: strided convolutions per branch (default: down to 4 x 4).
        use_bbox: concatenate the rectangle map as a second input channel of the spatial branch.

    Forward:
        ``(masks (B, 1, H, W), bbox_maps (B, 1, H, W) or None, branch_weights (spatial, Fourier)
        or None) -> (adv (B,), type_logits (B, T))``; ``branch_weights`` scale each branch's
        gradient, not its features (see the module docstring).
    """

    def __init__(self, num_types: int = 2, base_channels: int = 32, image_size: int = 64,
                 num_layers: int | None = None, use_bbox: bool = True) -> None:
        super().__init__()
        layers = num_layers or max(1, int(math.log2(max(image_size, 8) // 4)))
        widths = [base_channels * min(MAX_CHANNEL_MULT, 2**i) for i in range(layers)]
        self.use_bbox = use_bbox
        self.image_size = image_size
        self.spatial = _encoder(2 if use_bbox else 1, widths, norm_first=False)
        self.frequency = _encoder(1, widths, norm_first=False)
        features = 2 * widths[-1]
        self.adv_head = nn.Linear(features, 1)
        self.type_head = nn.Linear(features, num_types)

    def forward(self, masks: torch.Tensor, bbox_maps: torch.Tensor | None = None,
                branch_weights: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Real/fake logits ``(B,)`` and tumor-type logits ``(B, num_types)``."""
        if masks.ndim != 4 or masks.shape[1] != 1:
            raise BusmonaiInputError(f"discriminator input must be (B, 1, H, W) masks, got {tuple(masks.shape)}")
        spatial_in = masks
        if self.use_bbox:
            if bbox_maps is None or bbox_maps.shape != masks.shape:
                raise BusmonaiInputError("the SCMG discriminator needs rectangle maps of the masks' shape")
            spatial_in = torch.cat([masks, bbox_maps.to(masks)], dim=1)
        a = self.spatial(spatial_in).mean(dim=(2, 3))
        b = self.frequency(fourier_magnitude(masks)).mean(dim=(2, 3))
        if branch_weights is not None:
            a, b = _scale_gradient(a, float(branch_weights[0])), _scale_gradient(b, float(branch_weights[1]))
        features = torch.cat([a, b], dim=1)
        return self.adv_head(features)[:, 0], self.type_head(features)


# ----------------------------------------------------------------------------------------------
# sampling masks from a trained generator (used by training previews and by synthesis)

MASK_THRESHOLD = 0.5
"""Generated soft masks are binarised at this value."""
BOX_SCALE_JITTER = 0.1
"""Standard deviation of the log-scale jitter of resampled rectangle sides."""
BOX_SHIFT_JITTER = 0.1
"""Standard deviation of the centre jitter, as a fraction of the rectangle's side."""
MIN_BOX_SIDE = 2
"""Smallest side, in pixels, of a sampled rectangle."""


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` (or the module itself)."""
    return getattr(module, "module", module)


def sample_bboxes(box_bank: torch.Tensor, types: torch.Tensor, image_size: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random rectangles from training statistics: a training rectangle of the same type,
    its sides scaled by ``exp(N(0, BOX_SCALE_JITTER))`` and its centre moved by
    ``N(0, BOX_SHIFT_JITTER)`` sides, then kept inside the image.

    Args:
        box_bank: ``(T, K, 4)`` normalised rectangles (the generator's ``box_bank`` buffer).
        types: ``(B,)`` tumor-type indices.
        image_size: side of the image, pixels.
        generator: torch random generator (for reproducibility).

    Returns:
        ``(B, 4)`` int64 rectangles ``(x0, y0, x1, y1)``, exclusive ends, inside the image.
    """
    bank = box_bank.detach().cpu().float()
    if float(bank.abs().sum()) == 0:
        raise BusmonaiInputError("the generator's rectangle bank is empty; train bundles/scmg (or pass --bbox)")
    types = types.cpu()
    n = types.shape[0]
    pick = torch.randint(0, bank.shape[1], (n,), generator=generator)
    boxes = bank[types, pick] * image_size
    noise = torch.randn(n, 4, generator=generator)
    width = ((boxes[:, 2] - boxes[:, 0]) * torch.exp(BOX_SCALE_JITTER * noise[:, 0])).clamp(MIN_BOX_SIDE, image_size)
    height = ((boxes[:, 3] - boxes[:, 1]) * torch.exp(BOX_SCALE_JITTER * noise[:, 1])).clamp(MIN_BOX_SIDE, image_size)
    cx = 0.5 * (boxes[:, 0] + boxes[:, 2]) + BOX_SHIFT_JITTER * width * noise[:, 2]
    cy = 0.5 * (boxes[:, 1] + boxes[:, 3]) + BOX_SHIFT_JITTER * height * noise[:, 3]
    width, height = width.round(), height.round()
    x0 = (cx - 0.5 * width).round().clamp(torch.zeros(n), image_size - width)
    y0 = (cy - 0.5 * height).round().clamp(torch.zeros(n), image_size - height)
    return torch.stack([x0, y0, x0 + width, y0 + height], dim=1).to(torch.int64)


def generate_soft_masks(generator: nn.Module, types: torch.Tensor, bboxes: torch.Tensor, seed: int = 0,
                        batch_size: int = 64, device: torch.device | str | None = None) -> torch.Tensor:
    """Soft masks ``(B, 1, H, W)`` for given tumor types and rectangles at the generator's size.

    Raises:
        BusmonaiInputError: an unknown type or a rectangle outside the image / of zero area.
    """
    model = unwrap(generator)
    size = model.image_size
    for box in bboxes.tolist():
        validate_bbox(box, size, size)
    device = device or next(model.parameters()).device
    noise = torch.Generator().manual_seed(int(seed))
    z = torch.randn(len(types), model.latent_dim, generator=noise)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(types), batch_size):
        sl = slice(start, start + batch_size)
        maps = bboxes_to_maps(bboxes[sl].to(device), size, size)
        out.append(model(z[sl].to(device), types[sl].to(device), maps).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 1, size, size)


def binarize_masks(soft: torch.Tensor, bboxes: torch.Tensor | None = None,
                   clip_to_bbox: bool = False) -> list[np.ndarray]:
    """Threshold soft masks at ``MASK_THRESHOLD``, keep the largest connected component and fill its
    holes (a lesion mask is one region without holes: 1 of BUSI's 414 training tumor masks at 64 px
    has one, against 8 % of the malignant masks a 15-minute generator drew).

    Args:
        soft: ``(B, 1, H, W)`` in ``[0, 1]``.
        bboxes: ``(B, 4)`` rectangles at the same size (needed for ``clip_to_bbox``).
        clip_to_bbox: zero the pixels outside each rectangle first (guarantees containment).

    Returns:
        ``B`` boolean ``H x W`` arrays. A mask with no pixel above the threshold (inside its
        rectangle when clipping) falls back to the pixels above half its maximum, so that
        every mask is non-empty.
    """
    arrays = soft[:, 0].detach().cpu().numpy()
    out = []
    for i, array in enumerate(arrays):
        if clip_to_bbox and bboxes is not None:
            x0, y0, x1, y1 = (int(v) for v in bboxes[i].tolist())
            clipped = np.zeros_like(array)
            clipped[y0:y1, x0:x1] = array[y0:y1, x0:x1]
            array = clipped
        region = array > MASK_THRESHOLD
        if not region.any():
            region = array >= 0.5 * array.max() if array.max() > 0 else np.zeros_like(region)
        labels, count = ndimage.label(region)
        if count > 1:
            sizes = ndimage.sum_labels(region, labels, index=np.arange(1, count + 1))
            region = labels == (int(np.argmax(sizes)) + 1)
        out.append(ndimage.binary_fill_holes(region))
    return out
