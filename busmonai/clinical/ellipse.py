"""Elastic-deformed ellipse tumor masks with the CP paper's clinical shape prior.

The CP paper (MICCAI 2025, "Clinical Prior-Guided Tumor Generation for Breast Ultrasound with
Cross Domain Adaptation") makes tumor masks without annotation: an ellipse with semi-axes ``a``
(horizontal) and ``b`` (vertical) centred at ``(x0, y0)`` with ``a <= x0 <= W - a`` and
``b <= y0 <= H - b``; benign lesions wider than tall (``a > b``, BI-RADS "parallel"
orientation), malignant taller than wide (``a < b``, "not parallel"); small, medium or large;
then an elastic deformation ``D(m, sigma)`` whose strength ``sigma`` sets the irregularity of
the margin. The journal extension (SCMG paper, Medical Image Analysis 2025) uses the same masks
as its baseline. No numeric ranges are published; here they come from training-mask statistics
(:class:`EllipseMaskPrior`):

* **Size**: ``s = sqrt(mask area) / sqrt(H * W)`` (the lesion's side relative to the image's).
  Per class, the size classes small / medium / large are the intervals between the 5 %, 33.3 %,
  66.7 % and 95 % quantiles of ``s`` on the training masks; a draw is uniform in its interval.
* **Orientation and elongation**: the elongation ``e = |log(w / h)|`` of the training masks'
  bounding boxes is fitted per class (mean, std) and sampled from that normal distribution
  truncated to ``[log(MIN_ASPECT), log(MAX_ASPECT)]``; the sign is the class rule (benign
  ``w > h``, malignant ``w < h``), never the data. On BUSI the rule is a clinical prior, not a
  statistic: 90 % of the malignant masks are wider than tall. The rule is enforced on the
  *final* mask: its bounding box must be wider than tall (benign) or taller than wide
  (malignant); a draw that breaks it is re-drawn (``MAX_ATTEMPTS``, with the deformation halved
  every ``ATTEMPTS_PER_HALVING`` attempts, ending with the undeformed ellipse, which conforms by
  construction).
* **Irregularity**: ``sigma`` is the standard deviation of the displacement field as a fraction
  of the ellipse's mean radius ``sqrt(a * b)``. The field is white Gaussian noise smoothed by a
  Gaussian of ``ELASTIC_LENGTH * sqrt(a * b)`` pixels and rescaled to that standard deviation
  (Simard et al., ICDAR 2003; MONAI's ``Rand2DElastic``), so the deformation is the same for
  every image size. The mask is resampled along the field with ``scipy.ndimage.map_coordinates``
  (linear), thresholded at 1/2, and the largest connected component is kept with its holes
  filled. ``fit`` calibrates ``sigma`` per class so that the generated masks' mean
  :func:`~busmonai.clinical.curvature.boundary_curvature` matches that of the training masks.
  On BUSI (the values of :meth:`EllipseMaskPrior.default`): benign curvature 0.0625 ->
  ``sigma = 0.044``, malignant 0.120 -> ``sigma = 0.247``; fitting the 518 masks takes about
  1 s.

With a bounding box ``(x0, y0, x1, y1)`` (exclusive ends, :mod:`busmonai.clinical.bbox`), the
ellipse is inscribed in it, shrunk by ``1 / (1 + BBOX_ROOM * sigma)`` to leave room for the
deformation, and the deformed mask is clipped to the box. When the box's own aspect breaks the
class rule (a tall box for a benign mask), the largest ellipse of a class-conforming aspect drawn
from the prior that fits in the box is used, centred in it. The size class is then ignored.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from busmonai.clinical.bbox import mask_bbox, validate_bbox
from busmonai.clinical.classes import TUMOR_CLASSES
from busmonai.errors import BusmonaiInputError

TUMOR_LABELS: tuple[str, ...] = TUMOR_CLASSES
"""Labels with an orientation rule (benign wider than tall, malignant taller than wide)."""
SIZE_CLASSES: tuple[str, ...] = ("small", "medium", "large")
"""Size classes, in increasing order of area."""
SIZE_QUANTILES: tuple[float, float, float, float] = (0.05, 1.0 / 3.0, 2.0 / 3.0, 0.95)
"""Quantiles of ``sqrt(area) / sqrt(H W)`` bounding small / medium / large."""
MIN_ASPECT = 1.15
"""Smallest ``long side / short side`` of a drawn ellipse: keeps draws away from a circle so the
orientation rule survives rasterisation and deformation."""
MAX_ASPECT = 3.0
"""Largest ``long side / short side`` of a drawn ellipse."""
MIN_IMAGE_SIDE = 16
"""Smallest image side (pixels) accepted."""
MIN_SEMI_AXIS = 2.0
"""Smallest semi-axis in pixels (smaller ellipses are scaled up to it)."""
ELASTIC_LENGTH = 0.25
"""Correlation length of the displacement field (Gaussian sigma of the smoothing), as a fraction
of the mean radius ``sqrt(a * b)``."""
BORDER_ROOM = 2.0
"""The centre range keeps ``BORDER_ROOM * sigma * radius + 1`` pixels between the undeformed
ellipse and the image border, so the deformation rarely touches the border."""
BBOX_ROOM = 2.0
"""Inside a given box the ellipse's semi-axes are divided by ``1 + BBOX_ROOM * sigma``."""
MAX_ATTEMPTS = 20
"""Draws per mask before falling back to the undeformed ellipse."""
ATTEMPTS_PER_HALVING = 5
"""The deformation strength is halved after this many rejected draws."""
SIGMA_GRID: tuple[float, ...] = (0.0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.4)
"""Candidate ``sigma`` values for the curvature calibration of :meth:`EllipseMaskPrior.fit`."""
MIN_FIT_MASKS = 3
"""A class needs at least this many training masks to be fitted (else it keeps the default)."""


@dataclass
class ClassShapePrior:
    """Shape statistics of one tumor class.

    Attributes:
        size_edges: four increasing values of ``sqrt(area) / sqrt(H * W)``: the small / medium /
            large intervals are ``[e0, e1]``, ``[e1, e2]``, ``[e2, e3]``.
        elongation_mean: mean of ``|log(bbox width / bbox height)|`` of the training masks.
        elongation_std: its standard deviation.
        sigma: default elastic deformation strength (displacement std / mean radius).
        curvature: mean :func:`~busmonai.clinical.curvature.boundary_curvature` of the training
            masks (the calibration target of ``sigma``), or ``None`` if unknown.
        n: number of training masks the statistics come from (0 for hand-set values).
    """

    size_edges: tuple[float, float, float, float]
    elongation_mean: float
    elongation_std: float
    sigma: float
    curvature: float | None = None
    n: int = 0

    def __post_init__(self) -> None:
        edges = tuple(float(v) for v in self.size_edges)
        if len(edges) != 4 or any(b < a for a, b in zip(edges, edges[1:])) or edges[0] <= 0 or edges[-1] > 1:
            raise BusmonaiInputError(f"size_edges must be four increasing values in (0, 1], got {self.size_edges!r}")
        if self.elongation_std < 0 or self.sigma < 0:
            raise BusmonaiInputError(
                f"elongation_std and sigma must be >= 0, got {self.elongation_std} and {self.sigma}"
            )
        self.size_edges = edges  # type: ignore[assignment]


# Measured on the 518 BUSI tumor masks in shared/data/Dataset_BUSI_with_GT (350 benign, 168
# malignant; multi-lesion masks merged) with EllipseMaskPrior.fit(..., seed=0): sizes,
# elongations and curvatures are the masks' statistics, sigma the calibrated value.
_DEFAULT_CLASSES: dict[str, dict[str, Any]] = {
    "benign": {
        "size_edges": (0.0755, 0.1450, 0.2552, 0.4883),
        "elongation_mean": 0.5762,
        "elongation_std": 0.3409,
        "sigma": 0.0443,
        "curvature": 0.0625,
        "n": 350,
    },
    "malignant": {
        "size_edges": (0.1703, 0.2789, 0.4177, 0.5996),
        "elongation_mean": 0.3719,
        "elongation_std": 0.2433,
        "sigma": 0.2468,
        "curvature": 0.1201,
        "n": 168,
    },
}


def _check_label(label: str) -> str:
    if label not in TUMOR_LABELS:
        raise BusmonaiInputError(f"unknown tumor label {label!r}; valid labels: {', '.join(TUMOR_LABELS)}")
    return label


def _check_size_class(size_class: str | None) -> str | None:
    if size_class is not None and size_class not in SIZE_CLASSES:
        raise BusmonaiInputError(f"unknown size class {size_class!r}; valid size classes: {', '.join(SIZE_CLASSES)}")
    return size_class


def _image_shape(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        dims = list(size)
        if len(dims) != 2:
            raise BusmonaiInputError(f"size must be an int or (height, width), got {size!r}")
        h, w = (int(v) for v in dims)
    if min(h, w) < MIN_IMAGE_SIDE:
        raise BusmonaiInputError(f"image size {h} x {w} is too small; both sides must be >= {MIN_IMAGE_SIDE} pixels")
    return h, w


def _label_name(label: Any) -> str:
    """Map datalist labels (0/1) and class names to ``benign``/``malignant``/other names."""
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return {0: "benign", 1: "malignant"}.get(int(label), str(label))
    return str(label)


@dataclass
class EllipseMaskPrior:
    """Per-class statistics driving :func:`generate_ellipse_mask` (see the module docstring).

    Attributes:
        classes: ``{"benign": ClassShapePrior, "malignant": ClassShapePrior}``.
    """

    classes: dict[str, ClassShapePrior] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in TUMOR_LABELS if c not in self.classes]
        if missing:
            raise BusmonaiInputError(f"EllipseMaskPrior lacks the class(es) {missing}; it needs {list(TUMOR_LABELS)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dictionary (``from_dict`` inverts it)."""
        return {"classes": {name: {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(c).items()}
                            for name, c in self.classes.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EllipseMaskPrior:
        """Inverse of :meth:`to_dict`.

        Raises:
            BusmonaiInputError: missing classes or fields, or invalid values.
        """
        try:
            classes = {name: ClassShapePrior(**{**c, "size_edges": tuple(c["size_edges"])})
                       for name, c in dict(data["classes"]).items()}
        except (KeyError, TypeError) as exc:
            raise BusmonaiInputError(f"malformed EllipseMaskPrior dictionary: {exc}") from None
        return cls(classes)

    @classmethod
    def default(cls) -> EllipseMaskPrior:
        """The prior measured on the BUSI masks (values in ``_DEFAULT_CLASSES``), usable without data."""
        return cls({name: ClassShapePrior(**vals) for name, vals in _DEFAULT_CLASSES.items()})

    @classmethod
    def fit(
        cls,
        masks: Sequence[np.ndarray],
        labels: Sequence[str | int],
        calibrate_sigma: bool = True,
        calibration_draws: int = 16,
        calibration_size: int = 128,
        seed: int = 0,
    ) -> EllipseMaskPrior:
        """Fit the prior to training masks.

        Args:
            masks: ``H x W`` binary masks (any non-zero pixel is lesion); sizes may differ.
            labels: per mask ``"benign"`` / ``"malignant"`` (or datalist labels 0 / 1); other
                labels (``"normal"``, ``None``) are ignored.
            calibrate_sigma: choose each class's ``sigma`` so that the mean boundary curvature of
                generated masks matches the training masks' (interpolated on ``SIGMA_GRID``);
                if False, the default sigmas are kept.
            calibration_draws: masks generated per grid value.
            calibration_size: image side of the calibration masks.
            seed: seed of the calibration draws.

        Returns:
            The fitted prior. Classes with fewer than ``MIN_FIT_MASKS`` masks keep the default
            values (with a warning).

        Raises:
            BusmonaiInputError: lengths differ, an empty or non-2-D tumor mask, or no tumor mask.
        """
        from busmonai.clinical.curvature import boundary_curvature

        if len(masks) != len(labels):
            raise BusmonaiInputError(f"fit: {len(masks)} masks but {len(labels)} labels")
        per_class: dict[str, list[np.ndarray]] = {c: [] for c in TUMOR_LABELS}
        for i, (m, lab) in enumerate(zip(masks, labels)):
            name = _label_name(lab)
            if name not in per_class:
                continue
            arr = np.asarray(m) > 0
            if arr.ndim != 2 or not arr.any():
                raise BusmonaiInputError(f"fit: mask {i} ({name}) is empty or not 2-D (shape {arr.shape})")
            per_class[name].append(arr)
        if not any(per_class.values()):
            raise BusmonaiInputError("fit: no benign or malignant mask given")
        default = cls.default()
        classes: dict[str, ClassShapePrior] = {}
        for name, items in per_class.items():
            if len(items) < MIN_FIT_MASKS:
                warnings.warn(f"fit: only {len(items)} {name} mask(s); keeping the default {name} prior", stacklevel=2)
                classes[name] = default.classes[name]
                continue
            sizes = np.array([math.sqrt(a.sum() / a.size) for a in items])
            elong = []
            for a in items:
                x0, y0, x1, y1 = mask_bbox(a)
                elong.append(abs(math.log((x1 - x0) / (y1 - y0))))
            edges = tuple(float(v) for v in np.quantile(sizes, SIZE_QUANTILES))
            curv = float(np.mean([boundary_curvature(a) for a in items]))
            classes[name] = ClassShapePrior(
                size_edges=edges,  # type: ignore[arg-type]
                elongation_mean=float(np.mean(elong)),
                elongation_std=float(np.std(elong)),
                sigma=default.classes[name].sigma,
                curvature=curv,
                n=len(items),
            )
        prior = cls(classes)
        if calibrate_sigma:
            for name in TUMOR_LABELS:
                if prior.classes[name].n >= MIN_FIT_MASKS:
                    prior.classes[name].sigma = _calibrate_sigma(
                        prior, name, prior.classes[name].curvature, calibration_draws, calibration_size, seed
                    )
        return prior


def _calibrate_sigma(
    prior: EllipseMaskPrior, label: str, target: float | None, draws: int, size: int, seed: int
) -> float:
    """``sigma`` on ``SIGMA_GRID`` (linearly interpolated) whose masks' mean curvature hits ``target``."""
    from busmonai.clinical.curvature import boundary_curvature

    if target is None:
        return prior.classes[label].sigma
    means = []
    for sigma in SIGMA_GRID:
        rng = np.random.default_rng(seed)  # common random numbers: a smooth curve in sigma
        vals = [boundary_curvature(generate_ellipse_mask(label, size, rng, prior, sigma=sigma)) for _ in range(draws)]
        means.append(float(np.mean(vals)))
    curve = np.maximum.accumulate(np.array(means))  # monotone in sigma
    if target <= curve[0]:
        return float(SIGMA_GRID[0])
    if target >= curve[-1]:
        return float(SIGMA_GRID[-1])
    return round(float(np.interp(target, curve, SIGMA_GRID)), 4)


def elastic_deform(
    mask: np.ndarray, sigma_px: float, length_px: float, rng: np.random.Generator, order: int = 1
) -> np.ndarray:
    """Resample a mask along a smooth random displacement field (Simard et al., 2003).

    Each displacement component is white Gaussian noise smoothed by a Gaussian of ``length_px``
    pixels and rescaled to standard deviation ``sigma_px`` pixels; the mask is sampled at the
    displaced coordinates with ``map_coordinates`` (zeros outside the image).

    Args:
        mask: ``H x W`` float mask.
        sigma_px: displacement standard deviation, pixels.
        length_px: correlation length (smoothing sigma), pixels.
        rng: random generator.
        order: spline order of the resampling.

    Returns:
        Deformed float mask, same shape (not thresholded).
    """
    h, w = mask.shape
    shifts = []
    for _ in range(2):
        field_ = ndimage.gaussian_filter(rng.standard_normal((h, w)), max(length_px, 0.5), mode="reflect")
        std = field_.std()
        shifts.append(field_ * (sigma_px / std) if std > 0 else field_ * 0.0)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    coords = np.stack([yy + shifts[0], xx + shifts[1]])
    return ndimage.map_coordinates(mask.astype(np.float64), coords, order=order, mode="constant", cval=0.0)


def _ellipse_raster(h: int, w: int, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Float 0/1 ellipse with pixel centres at ``i + 1/2``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    return ((((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2) <= 1.0).astype(np.float64)


def _clean(mask: np.ndarray) -> np.ndarray:
    """Largest 8-connected component with its holes filled."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return mask
    if n > 1:
        counts = np.bincount(lab.ravel())
        counts[0] = 0
        mask = lab == int(np.argmax(counts))
    return ndimage.binary_fill_holes(mask)


def _conforms(mask: np.ndarray, label: str) -> bool:
    if not mask.any():
        return False
    x0, y0, x1, y1 = mask_bbox(mask)
    wdt, hgt = x1 - x0, y1 - y0
    return wdt > hgt if label == "benign" else wdt < hgt


def _draw_aspect(rng: np.random.Generator, prior: ClassShapePrior, label: str) -> float:
    """``a / b`` of a class-conforming ellipse (> 1 benign, < 1 malignant)."""
    lo, hi = math.log(MIN_ASPECT), math.log(MAX_ASPECT)
    e = float(np.clip(prior.elongation_mean, lo, hi))
    for _ in range(100):
        cand = rng.normal(prior.elongation_mean, prior.elongation_std)
        if lo <= cand <= hi:
            e = float(cand)
            break
    return math.exp(e) if label == "benign" else math.exp(-e)


def generate_ellipse_mask(
    label: str,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    prior: EllipseMaskPrior | None = None,
    size_class: str | None = None,
    sigma: float | None = None,
    bbox: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """One elastic-deformed ellipse mask following the CP clinical prior.

    Args:
        label: ``"benign"`` (wider than tall) or ``"malignant"`` (taller than wide).
        size: image side, or ``(height, width)``; both sides >= ``MIN_IMAGE_SIDE``.
        rng: random generator (the only source of randomness: same state, same mask).
        prior: shape statistics; :meth:`EllipseMaskPrior.default` if None.
        size_class: ``"small"``, ``"medium"``, ``"large"``, or None for a uniform choice among
            them. Ignored when ``bbox`` is given.
        sigma: deformation strength (displacement std / mean radius); the class default if
            None; 0 gives the plain ellipse.
        bbox: ``(x0, y0, x1, y1)`` (exclusive ends) the mask must lie in; the ellipse is
            inscribed in it.

    Returns:
        ``H x W`` uint8 mask with values 0 and 255, one connected lesion without holes, whose
        bounding box is wider than tall (benign) or taller than wide (malignant).

    Raises:
        BusmonaiInputError: unknown label or size class, image side < ``MIN_IMAGE_SIDE``,
            negative sigma, or a bbox outside the image, of zero area, or too small to hold a
            class-conforming mask.
    """
    label = _check_label(label)
    size_class = _check_size_class(size_class)
    h, w = _image_shape(size)
    cls_prior = (prior or EllipseMaskPrior.default()).classes[label]
    sig = cls_prior.sigma if sigma is None else float(sigma)
    if not math.isfinite(sig) or sig < 0:
        raise BusmonaiInputError(f"sigma must be a finite number >= 0, got {sigma!r}")
    box = validate_bbox(bbox, h, w) if bbox is not None else None

    for attempt in range(MAX_ATTEMPTS + 1):
        s_att = 0.0 if attempt == MAX_ATTEMPTS else sig * 0.5 ** (attempt // ATTEMPTS_PER_HALVING)
        if box is None:
            cx, cy, a, b = _place_free(rng, cls_prior, label, h, w, size_class, sig)
        else:
            cx, cy, a, b = _place_in_box(rng, cls_prior, label, box, sig)
        r = math.sqrt(a * b)
        base = _ellipse_raster(h, w, cx, cy, a, b)
        if s_att > 0:
            soft = elastic_deform(base, s_att * r, ELASTIC_LENGTH * r, rng)
        else:
            soft = base
        out = soft >= 0.5
        if box is not None:
            x0, y0, x1, y1 = box
            clip = np.zeros_like(out)
            clip[y0:y1, x0:x1] = True
            out &= clip
        out = _clean(out)
        if box is None and _touches_border(out):
            continue  # a lesion cut by the image edge is not a whole tumor: draw again
        if _conforms(out, label):
            return out.astype(np.uint8) * 255
    raise BusmonaiInputError(
        f"cannot draw a {label} mask ({'wider' if label == 'benign' else 'taller'} than "
        f"{'tall' if label == 'benign' else 'wide'}) in "
        + (f"bbox {box}; use a larger box" if box is not None else f"a {h} x {w} image")
    )


def _touches_border(mask: np.ndarray) -> bool:
    """True if the mask reaches the first or last row or column of the image."""
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _place_free(
    rng: np.random.Generator, prior: ClassShapePrior, label: str, h: int, w: int, size_class: str | None, sigma: float
) -> tuple[float, float, float, float]:
    """Centre and semi-axes of an ellipse drawn from the prior in an ``h x w`` image."""
    k = SIZE_CLASSES.index(size_class) if size_class is not None else int(rng.integers(len(SIZE_CLASSES)))
    lo, hi = prior.size_edges[k], prior.size_edges[k + 1]
    s = rng.uniform(lo, hi)
    area = s * s * h * w
    aspect = _draw_aspect(rng, prior, label)
    b = math.sqrt(area / (math.pi * aspect))
    a = aspect * b
    room = 1.0 + BORDER_ROOM * sigma
    # Fit in the image with room for the deformation (a <= x0 <= W - a in the paper's terms).
    scale = min(1.0, (w / 2.0 - 1.0) / (a * room), (h / 2.0 - 1.0) / (b * room))
    a, b = a * scale, b * scale
    grow = max(1.0, MIN_SEMI_AXIS / min(a, b))
    a, b = a * grow, b * grow
    mx, my = min(a * room + 1.0, w / 2.0), min(b * room + 1.0, h / 2.0)
    cx = rng.uniform(mx, w - mx)
    cy = rng.uniform(my, h - my)
    return cx, cy, a, b


def _place_in_box(
    rng: np.random.Generator, prior: ClassShapePrior, label: str, box: tuple[int, int, int, int], sigma: float
) -> tuple[float, float, float, float]:
    """Centre and semi-axes of the ellipse inscribed in ``box`` (see the module docstring)."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    box_ok = bw / bh >= MIN_ASPECT if label == "benign" else bh / bw >= MIN_ASPECT
    if box_ok:
        a, b = bw / 2.0, bh / 2.0
    else:
        aspect = _draw_aspect(rng, prior, label)  # a / b
        a = min(bw / 2.0, aspect * bh / 2.0)
        b = a / aspect
    shrink = 1.0 / (1.0 + BBOX_ROOM * sigma)
    return 0.5 * (x0 + x1), 0.5 * (y0 + y1), a * shrink, b * shrink


def generate_ellipse_masks(
    label: str,
    n: int,
    size: int | tuple[int, int],
    seed: int,
    prior: EllipseMaskPrior | None = None,
    size_class: str | None = None,
    sigma: float | None = None,
    bbox: tuple[int, int, int, int] | None = None,
) -> list[np.ndarray]:
    """``n`` masks from one generator seeded with ``seed`` (see :func:`generate_ellipse_mask`).

    Raises:
        BusmonaiInputError: ``n < 0`` or any error of :func:`generate_ellipse_mask`.
    """
    if n < 0:
        raise BusmonaiInputError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    prior = prior or EllipseMaskPrior.default()
    return [generate_ellipse_mask(label, size, rng, prior, size_class, sigma, bbox) for _ in range(n)]
