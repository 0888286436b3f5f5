"""Annotation-free synthesis of a labeled BUS dataset (``busmonai generate``).

For N samples: draw a class (balanced, or R x the training set of a datalist with the same class
balance), a tumor mask (a real training mask, CP's elastic ellipse, or the SCMG generator), the
echogenicity and boundary attributes (from the datalist's per-class frequencies, or the class's
typical values), build the BI-RADS prompt (``busmonai.clinical.prompts``), and sample with the
ControlNet + LDM (DDIM with classifier-free guidance). Images, masks and a datalist with
``"synthetic": true`` and the generation settings are written to the output folder.

Reproducible and resumable: the whole plan (classes, masks, prompts, per-sample seeds) is fixed
from the seed and written first (``plan.json`` and the masks); images are then generated in fixed
batches, each written atomically, so an interrupted run continues at the first unfinished batch
and produces the same files as an uninterrupted one. Ablations (docs/method.md section 2): ``full``
(text + mask), ``text`` (no ControlNet, "Ours-t"), ``mask`` (ControlNet with the unconditional,
prompt-free context the model learned through prompt dropout, "Ours-m").

Lesions into real images (``--background DATALIST``): each sample takes a real training image of
that datalist (``normal`` images, or ``tumor`` images whose lesion is erased), moves its mask into
the image's tissue region (:class:`busmonai.clinical.placement.TissueRegion`) and synthesises only
inside the mask dilated by ``blend_margin`` px (OR the erased lesion): the real latent outside is
put back, noised to the current step, after every denoising step
(:class:`busmonai.synthesis.sampling.LatentInpainting`), and the decoded image is composed with
the real pixels outside the region, so only the region is new. The label is exact by construction
(the mask is where the lesion was drawn); adherence is measured anyway. Plan paths are checked to
stay inside the output folder (:func:`output_path`).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import nn
from tqdm import tqdm

from busmonai.clinical.bbox import mask_bbox
from busmonai.clinical.classes import NORMAL, TUMOR_CLASSES
from busmonai.clinical.ellipse import EllipseMaskPrior, generate_ellipse_mask
from busmonai.clinical.placement import TissueRegion
from busmonai.clinical.prompts import CLASS_DEFAULTS, build_prompt
from busmonai.data.dataset import split_items
from busmonai.data.imageio import open_image, save_png
from busmonai.errors import BusmonaiInputError
from busmonai.files import write_json_atomic
from busmonai.networks.io_check import latent_shape
from busmonai.networks.latent_diffusion import UNCONDITIONAL_FILL
from busmonai.synthesis.filtering import SyntheticFilter
from busmonai.synthesis.sampling import LatentInpainting, ddim_sample, decode, make_ddim, seeded_noise

PRODUCER = "busmonai generate"
PLAN_NAME = "plan.json"
FILTER_NAME = "filter.json"
"""The filter's score of every candidate (written after each batch, so a resumed run skips them)."""
DATALIST_NAME = "datalist.json"
SHEET_NAME = "sheet.png"
MODES = ("full", "text", "mask")
BLENDS = ("latent", "pixel")
"""How a real background joins the synthesised region: ``latent``, the real latent put back after
every denoising step (RePaint without resampling, i.e. latent blending) and the real pixels composed
outside after decoding; ``pixel``, the sample drawn freely and only the final pixel composite (a
naive paste, the baseline the seam comparison measures against)."""
MASK_SOURCES = ("real", "ellipse", "scmg")
ATTRIBUTE_DEFAULT_PROBABILITY = 0.75
"""Without a datalist, the class's typical attribute is drawn with this probability."""
BACKGROUND_CLASSES: dict[str, tuple[str, ...]] = {"normal": (NORMAL,), "tumor": TUMOR_CLASSES}
"""``--background-classes``: real images without a lesion, or tumor images whose lesion is replaced."""


@dataclass
class GenerationSettings:
    """Everything that determines a synthetic dataset (recorded in ``plan.json`` and the datalist)."""

    n: int = 0
    ratio: float | None = None
    ratio_of: str | None = None
    mask_source: str = "ellipse"
    mode: str = "full"
    guidance: float = 3.0
    mask_guidance: float | None = None
    conditioning_scale: float = 1.0
    steps: int = 50
    seed: int = 0
    batch_size: int = 16
    image_size: int = 64
    datalist: str | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    background: str | None = None
    background_classes: str = "normal"
    blend_margin: int = 3
    blend: str = "latent"
    filter: dict[str, Any] | None = None

    def validate(self) -> None:
        """Raise :class:`BusmonaiInputError` for impossible settings."""
        if self.ratio is not None and self.ratio < 0:
            raise BusmonaiInputError(f"--ratio {self.ratio}: the ratio of synthetic to real images must be >= 0")
        if self.ratio is None and self.n < 1:
            raise BusmonaiInputError(f"--n {self.n}: generate at least one image (or give --ratio-of and --ratio)")
        if self.ratio is not None and not self.ratio_of:
            raise BusmonaiInputError("--ratio needs --ratio-of DATALIST (the real training set it is a ratio of)")
        if self.mode not in MODES:
            raise BusmonaiInputError(f"unknown --mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mask_source not in MASK_SOURCES:
            raise BusmonaiInputError(f"unknown --mask-source {self.mask_source!r}; use one of {', '.join(MASK_SOURCES)}")
        if self.mask_source == "real" and not self.datalist:
            raise BusmonaiInputError("--mask-source real needs a datalist (--datalist or --ratio-of) to draw masks from")
        for name, value in (("--guidance", self.guidance), ("--mask-guidance", self.mask_guidance),
                            ("--conditioning-scale", self.conditioning_scale)):
            if value is not None and not math.isfinite(float(value)):
                raise BusmonaiInputError(f"{name} {value}: give a finite number (e.g. 3.0 for guidance, 1.0 for the scale)")
        if self.steps < 1 or self.batch_size < 1:
            raise BusmonaiInputError("--steps and --batch-size must be at least 1")
        if self.background_classes not in BACKGROUND_CLASSES:
            raise BusmonaiInputError(f"--background-classes {self.background_classes!r}: use one of "
                                     f"{', '.join(BACKGROUND_CLASSES)}")
        if self.blend not in BLENDS:
            raise BusmonaiInputError(f"--blend {self.blend!r}: use one of {', '.join(BLENDS)}")
        if not 0 <= int(self.blend_margin) <= self.image_size // 4:
            raise BusmonaiInputError(f"--blend-margin {self.blend_margin}: use 0 to {self.image_size // 4} px")


def _training_tumors(datalist_path: str) -> tuple[Path, list[dict[str, Any]]]:
    path = Path(datalist_path)
    items = split_items(path, "training", TUMOR_CLASSES, required=("image", "mask"))
    if not items:
        raise BusmonaiInputError(f"{path}: no benign or malignant training items")
    return path.parent, items


def background_items(settings: GenerationSettings) -> tuple[Path, list[dict[str, Any]], TissueRegion]:
    """The real images new lesions go into (training split of ``--background``, of
    ``--background-classes``) and the tissue region their lesions may occupy
    (:class:`busmonai.clinical.placement.TissueRegion`, from that datalist's training lesions, else
    from ``--datalist``'s).

    Raises:
        BusmonaiInputError: no image of those classes, or no lesion mask to learn the region from.
    """
    path = Path(str(settings.background))
    classes = BACKGROUND_CLASSES[settings.background_classes]
    items = split_items(path, "training", classes, required=("image",))
    if not items:
        raise BusmonaiInputError(
            f"{path}: no {' or '.join(classes)} training images to use as backgrounds; BUSI's normal images are kept "
            "by 'busmonai prepare busi', or pass --background-classes tumor")
    lesions = split_items(path, "training", TUMOR_CLASSES, required=("image", "mask"))
    root = path.parent
    if not lesions and settings.datalist:
        root, lesions = _training_tumors(settings.datalist)
    if not lesions:
        raise BusmonaiInputError(f"{path}: no tumor masks to learn where lesions lie; give --datalist with tumors")
    region = TissueRegion.fit([_load_real_mask(root, i, settings.image_size) for i in lesions])
    return path.parent, items, region


def class_counts(settings: GenerationSettings) -> dict[str, int]:
    """Samples per class: R x the datalist's training counts, or ``n`` split evenly."""
    if settings.ratio is not None:
        _, items = _training_tumors(settings.ratio_of)  # type: ignore[arg-type]
        real = Counter(i["class"] for i in items)
        return {cls: int(round(settings.ratio * real.get(cls, 0))) for cls in TUMOR_CLASSES}
    half = settings.n // 2
    return {"benign": settings.n - half, "malignant": half}


def _attribute_sampler(items: list[dict[str, Any]] | None) -> Any:
    """``draw(cls, rng) -> (echogenicity, boundary)`` following the datalist's per-class frequencies."""
    pools: dict[str, list[tuple[str, str]]] = {}
    for item in items or []:
        if item.get("echogenicity") and item.get("boundary"):
            pools.setdefault(item["class"], []).append((item["echogenicity"], item["boundary"]))

    def draw(cls: str, rng: np.random.Generator) -> tuple[str, str]:
        if pools.get(cls):
            return pools[cls][int(rng.integers(len(pools[cls])))]
        typical = CLASS_DEFAULTS[cls]
        other = CLASS_DEFAULTS["malignant" if cls == "benign" else "benign"]
        return tuple(t if rng.random() < ATTRIBUTE_DEFAULT_PROBABILITY else o for t, o in zip(typical, other))  # type: ignore[return-value]

    return draw


MASK_DRAWS_TO_FIT = 20
"""Ellipse or SCMG masks drawn per lesion until one fits the backgrounds' tissue region."""


def real_mask_pool(root: Path, items: list[dict[str, Any]], cls: str, size: int,
                   region: TissueRegion | None = None) -> list[dict[str, Any]]:
    """The training tumors of class ``cls`` whose masks ``--mask-source real`` draws from: with a
    tissue region (``--background``), only those whose lesion fits inside it.

    Raises:
        BusmonaiInputError: no such mask.
    """
    pool = [i for i in items if i["class"] == cls]
    if region is not None:
        pool = [i for i in pool if region.fits(_load_real_mask(root, i, size) > 0)]
        if not pool and any(i["class"] == cls for i in items):
            raise BusmonaiInputError(
                f"no {cls} training mask fits inside the backgrounds' tissue region (rows {region.y0}-{region.y1}, "
                f"columns {region.x0}-{region.x1}); use --mask-source ellipse or other backgrounds")
    return pool


def _load_real_mask(root: Path, item: dict[str, Any], size: int) -> np.ndarray:
    path = root / item["mask"]
    mask = np.asarray(open_image(path, fix="re-run 'busmonai prepare'").convert("L"))
    if mask.shape != (size, size):
        raise BusmonaiInputError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} px but generation runs at {size} px; "
            f"prepare the datalist with --size {size} or set the image size"
        )
    if not set(np.unique(mask).tolist()) <= {0, 255}:
        raise BusmonaiInputError(f"{path}: mask is not binary (values other than 0 and 255); re-run 'busmonai prepare'")
    if not mask.any():
        raise BusmonaiInputError(f"{path}: empty mask on a tumor item; re-run 'busmonai prepare'")
    return mask


def make_plan(settings: GenerationSettings, scmg_masks: Any = None) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """The deterministic plan: one entry per sample (class, prompt, seed, attributes) and its mask;
    with a filter (``settings.filter``), ``pool`` candidates per requested image.

    Args:
        settings: validated settings.
        scmg_masks: ``scmg_masks(label, n, rng) -> list of uint8 masks`` for ``mask_source="scmg"``.

    Returns:
        (entries, masks), masks uint8 0/255 of ``image_size``.
    """
    settings.validate()
    counts = class_counts(settings)
    if settings.filter:
        counts = {cls: int(math.ceil(n * float(settings.filter["pool"]))) for cls, n in counts.items()}
    if sum(counts.values()) < 1:
        raise BusmonaiInputError(f"the settings give no image to generate ({counts}); raise --ratio or --n")
    items: list[dict[str, Any]] | None = None
    root = Path(".")
    if settings.datalist:
        root, items = _training_tumors(settings.datalist)
    draw_attributes = _attribute_sampler(items)
    prior = None
    if settings.mask_source == "ellipse" and items:
        masks_fit = [_load_real_mask(root, i, settings.image_size) > 0 for i in items]
        prior = EllipseMaskPrior.fit(masks_fit, [i["class"] for i in items])
    backgrounds = background_items(settings) if settings.background else None
    pools: dict[str, list[dict[str, Any]]] = {}
    if settings.mask_source == "real":
        pools = {cls: real_mask_pool(root, items or [], cls, settings.image_size,
                                     backgrounds[2] if backgrounds is not None else None) for cls in TUMOR_CLASSES}
    labels = [cls for cls in TUMOR_CLASSES for _ in range(counts[cls])]
    order = np.random.default_rng([settings.seed, 7]).permutation(len(labels))  # interleave classes
    labels = [labels[int(k)] for k in order]
    entries: list[dict[str, Any]] = []
    masks: list[np.ndarray] = []
    per_class_index: Counter[str] = Counter()
    for k, cls in enumerate(labels):
        rng = np.random.default_rng([settings.seed, k])
        if settings.mask_source == "real":
            pool = pools[cls]
            if not pool:
                raise BusmonaiInputError(f"{settings.datalist}: no {cls} training mask to draw from")
            source_item = pool[int(rng.integers(len(pool)))]
            mask = _load_real_mask(root, source_item, settings.image_size)
            mask_origin = source_item["mask"]
        else:
            if settings.mask_source == "scmg" and scmg_masks is None:
                raise BusmonaiInputError("--mask-source scmg needs a trained SCMG generator (runs/scmg/model.pt)")
            for _ in range(MASK_DRAWS_TO_FIT if backgrounds is not None else 1):  # redraw what cannot be placed
                mask = (generate_ellipse_mask(cls, settings.image_size, rng, prior=prior)
                        if settings.mask_source == "ellipse" else scmg_masks(cls, 1, rng)[0])
                if backgrounds is None or backgrounds[2].fits(mask > 0):
                    break
            mask_origin = settings.mask_source
        extra: dict[str, Any] = {}
        if backgrounds is not None:  # the lesion goes into a real image, inside its tissue region
            bg_root, bg_pool, region = backgrounds
            background = bg_pool[int(rng.integers(len(bg_pool)))]
            mask = region.place(mask > 0, rng).astype(np.uint8) * 255
            extra = {"background": str((bg_root / background["image"]).resolve()),
                     "background_source": background.get("source", background["image"])}
            if background.get("class") in TUMOR_CLASSES and background.get("mask"):
                extra["background_mask"] = str((bg_root / background["mask"]).resolve())  # erased, then replaced
        echogenicity, boundary = draw_attributes(cls, rng)
        per_class_index[cls] += 1
        name = f"{cls}_{per_class_index[cls]:05d}.png"
        entries.append({
            "image": f"images/{name}", "mask": f"masks/{name}", "label": 0 if cls == "benign" else 1,
            "class": cls, "domain": "synthetic", "echogenicity": echogenicity, "boundary": boundary,
            "bbox": list(mask_bbox(mask)), "prompt": build_prompt(cls, echogenicity, boundary),
            "source": mask_origin, "synthetic": True, "seed": int(rng.integers(2**31 - 1)), **extra,
        })
        masks.append(mask.astype(np.uint8))
    return entries, masks


def scmg_sampler(checkpoint: str | Path, image_size: int, device: torch.device | str = "cpu") -> Any:
    """``sample(label, n, rng) -> list of uint8 masks`` from a trained SCMG generator, each with a
    random rectangle drawn from its training statistics (for ``mask_source="scmg"``)."""
    from busmonai.synthesis.masks import draw_scmg_masks, load_generator

    load_generator(checkpoint, device=device)  # fail early, naming the file, if it is missing

    def sample(label: str, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        masks, _ = draw_scmg_masks(checkpoint, label, n, image_size, seed=int(rng.integers(2**31 - 1)), device=device)
        return [mask.astype(np.uint8) * 255 for mask in masks]

    return sample


def output_path(out: Path, relative: Any) -> Path:
    """``out / relative`` for a path the plan names, refused when it would leave ``out``: absolute,
    with ``..``, or through a symbolic link (an edited or corrupted ``plan.json``, a linked
    ``images/`` folder).

    Raises:
        BusmonaiInputError: naming the plan entry and the fix.
    """
    rel = Path(str(relative)) if isinstance(relative, str) and relative else None
    target = out / rel if rel is not None else None
    if rel is None or rel.is_absolute() or ".." in rel.parts or target.resolve().parent != (
            out.resolve() / rel).parent:
        raise BusmonaiInputError(
            f"{out / PLAN_NAME}: the path {relative!r} leaves the output folder (absolute, '..' or a linked folder); "
            "the plan was edited or a folder in --out is a link: generate into a new folder")
    return target


_PLANNED_MASK = re.compile(r"^(benign|malignant)_\d{5}\.png$")


def _only_planned_masks(out: Path) -> bool:
    """True if ``out`` holds nothing but a ``masks/`` folder of planned mask names: the first step
    of a run stopped before it wrote ``plan.json``, which the same plan rewrites identically."""
    entries = list(out.iterdir())
    if [e.name for e in entries] != ["masks"] or not entries[0].is_dir() or entries[0].is_symlink():
        return False
    return all(f.is_file() and not f.is_symlink() and (_PLANNED_MASK.match(f.name) or f.name.startswith("."))
               for f in entries[0].iterdir())


def _check_output(out: Path, settings: GenerationSettings) -> bool:
    """True if ``out`` holds an unfinished or finished run with the same settings (resume)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not out.is_dir():
        raise BusmonaiInputError(f"--out {out} is a file; choose a folder")
    plan_path = out / PLAN_NAME
    if not plan_path.exists():
        if _only_planned_masks(out):  # an earlier run stopped between its masks and its plan
            return False
        raise BusmonaiInputError(
            f"--out {out} holds files that 'busmonai generate' did not write (no {PLAN_NAME}); choose an empty or new folder"
        )
    try:
        plan = json.loads(plan_path.read_text())
    except (OSError, ValueError) as err:
        raise BusmonaiInputError(
            f"{plan_path}: not a readable generation plan ({err}); it was edited or damaged outside busmonai: "
            "generate into a new folder"
        ) from None
    if not isinstance(plan, dict):
        raise BusmonaiInputError(f"{plan_path}: not a generation plan (a JSON {type(plan).__name__}); "
                                 "generate into a new folder")
    previous = {**asdict(GenerationSettings()), **plan.get("settings", {})}  # a setting added later: its default
    mine = asdict(settings)
    differing = sorted(k for k in set(previous) | set(mine) if previous.get(k) != mine.get(k))
    if plan.get("producer") != PRODUCER or differing:
        raise BusmonaiInputError(
            f"--out {out} holds another generation run (settings differ: {', '.join(differing) or 'producer'}); "
            "nothing was overwritten: choose a new folder, or repeat the earlier settings to resume it"
        )
    return True


@dataclass
class GenerationModels:
    """The frozen networks synthesis needs."""

    autoencoder: nn.Module
    ldm: nn.Module
    text_encoder: nn.Module | None
    controlnet: nn.Module | None
    noise_scheduler: Any
    device: torch.device | str = "cpu"

    def latent_shape(self, image_size: int) -> tuple[int, ...]:
        """(C, h, w) of the autoencoder's latents for ``image_size`` images."""
        return latent_shape(self.autoencoder, image_size)


def blend_regions(entries: list[dict[str, Any]], masks: list[np.ndarray], margin: int) -> np.ndarray:
    """``(B, H, W)`` bool: where a real-background sample is synthesised, the new lesion mask (OR
    the background's own lesion, which is erased) dilated by ``margin`` px; the real image is kept
    everywhere else."""
    regions = []
    for entry, mask in zip(entries, masks):
        region = np.asarray(mask) > 0
        if entry.get("background_mask"):
            region = region | (np.asarray(open_image(entry["background_mask"]).convert("L")) > 127)
        if margin > 0:
            region = ndimage.binary_dilation(region, iterations=int(margin))
        regions.append(region)
    return np.stack(regions)


def _backgrounds(entries: list[dict[str, Any]], image_size: int) -> torch.Tensor:
    """``(B, 1, H, W)`` the real background images in [0, 1]."""
    from busmonai.data.dataset import LoadPNGd

    load = LoadPNGd(keys="image", image_size=image_size)
    return torch.stack([load.load(entry["background"]) for entry in entries]).float()


@torch.no_grad()
def _generate_batch(models: GenerationModels, settings: GenerationSettings, entries: list[dict[str, Any]],
                    masks: list[np.ndarray], latent_shape: tuple[int, ...]) -> torch.Tensor:
    device = models.device
    noise = seeded_noise(latent_shape, [e["seed"] for e in entries], device)
    encoder = getattr(models.ldm, "text_encoder", None) or models.text_encoder
    context = encoder.encode([e["prompt"] for e in entries]).to(device)  # type: ignore[union-attr]
    guidance, mask_guidance = settings.guidance, settings.mask_guidance
    if settings.mode == "mask":  # the prompt-free context the model learned through prompt dropout
        context = torch.full_like(context, UNCONDITIONAL_FILL)
        guidance = 1.0  # no text contrast; the mask keeps its own weight
        mask_guidance = settings.guidance if mask_guidance is None else mask_guidance
    control = None
    controlnet = None
    if settings.mode != "text":  # a ControlNet, or an LDM that takes the mask as an input channel
        controlnet = models.controlnet
        control = torch.from_numpy(np.stack(masks).astype(np.float32) / 255.0)[:, None].to(device)
    scheduler = make_ddim(models.noise_scheduler, steps=settings.steps)
    inpaint, backgrounds, regions = None, None, None
    if entries and entries[0].get("background"):  # a real image outside the (dilated) lesion region
        backgrounds = _backgrounds(entries, settings.image_size).to(device)
        regions = torch.from_numpy(blend_regions(entries, masks, settings.blend_margin)).float()[:, None].to(device)
        if settings.blend == "latent":
            known = models.autoencoder.encode(backgrounds)[0] * models.ldm.scale_factor
            inpaint = LatentInpainting(known, F.adaptive_max_pool2d(regions, known.shape[-2:]),
                                       seeded_noise(latent_shape, [e["seed"] + 1 for e in entries], device))
    latents = ddim_sample(models.ldm, scheduler, noise, context, guidance=guidance, controlnet=controlnet,
                          control=control, conditioning_scale=settings.conditioning_scale,
                          mask_guidance=mask_guidance if control is not None else None, inpaint=inpaint)
    images = decode(models.autoencoder, latents, models.ldm.scale_factor)
    if backgrounds is not None:  # exactly the real pixels outside the region
        images = regions * images + (1.0 - regions) * backgrounds
    return images


def write_sheet(out: Path, models: GenerationModels, settings: GenerationSettings, masks: list[np.ndarray],
                n_columns: int = 6) -> Path:
    """A PNG sheet: rows of masks, then images generated from the same masks with a benign and a
    malignant prompt (same seeds), so shape control and text control show at a glance."""
    from busmonai.visualize import grid

    chosen = masks[:n_columns]
    rows = [list(chosen)]
    for cls in TUMOR_CLASSES:
        echo, boundary = CLASS_DEFAULTS[cls]
        entries = [{"prompt": build_prompt(cls, echo, boundary), "seed": settings.seed + k} for k in range(len(chosen))]
        images = _generate_batch(models, settings, entries, chosen, models.latent_shape(settings.image_size))
        rows.append([(img[0].cpu().numpy() * 255).round().astype(np.uint8) for img in images])
    path = out / SHEET_NAME
    save_png(grid([tile for row in rows for tile in row], ncols=len(chosen), fill=255), path)
    return path


def _filter_batch(out: Path, entries: list[dict[str, Any]], masks: list[np.ndarray], synthetic_filter: SyntheticFilter,
                  scores: dict[str, Any], target: dict[str, int], kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score the batch's written images not scored yet (saving the scores), and return the entries
    that pass and still fit their class's count, in plan order."""
    new = [k for k, e in enumerate(entries) if e["image"] not in scores]
    if new:
        images = torch.stack([torch.from_numpy(np.asarray(Image.open(output_path(out, entries[k]["image"]))).astype(
            np.float32) / 255.0)[None] for k in new])
        rows = synthetic_filter.score(images, [masks[k] for k in new], [entries[k]["label"] for k in new])
        scores.update({entries[k]["image"]: row for k, row in zip(new, rows)})
        write_json_atomic(scores, out / FILTER_NAME)
    counts = Counter(e["class"] for e in kept)
    chosen = []
    for entry in entries:
        if scores[entry["image"]]["kept"] and counts[entry["class"]] < target[entry["class"]]:
            counts[entry["class"]] += 1
            chosen.append(entry)
    return chosen


def write_background_sheet(out: Path, entries: list[dict[str, Any]], n_columns: int = 6) -> Path:
    """A PNG sheet of real-background samples: the real images, the new masks, the synthetic images."""
    from busmonai.visualize import grid

    chosen = entries[:n_columns]
    load = lambda path: np.asarray(Image.open(path).convert("L"))  # noqa: E731
    rows = [[load(e["background"]) for e in chosen], [load(out / e["mask"]) for e in chosen],
            [load(out / e["image"]) for e in chosen]]
    path = out / SHEET_NAME
    save_png(grid([tile for row in rows for tile in row], ncols=len(chosen), fill=255), path)
    return path


def generate_dataset(out: str | Path, settings: GenerationSettings, models: GenerationModels,
                     scmg_masks: Any = None, progress: bool = True, sheet: bool = True,
                     stop_after_batches: int | None = None, synthetic_filter: SyntheticFilter | None = None) -> dict[str, Any]:
    """Plan, generate and write a synthetic dataset (see the module docstring).

    Args:
        out: output folder (new, empty, or an unfinished run with the same settings).
        settings: the generation settings.
        models: the frozen networks.
        scmg_masks: mask sampler for ``mask_source="scmg"``.
        progress: show progress bars.
        sheet: also write the mask / benign / malignant PNG sheet.
        stop_after_batches: stop (as if killed) after this many batches (tests of resumption).
        synthetic_filter: keep only the candidates it passes, until each class has its count
            (``settings.filter`` must record it); the datalist lists the kept images only.

    Returns:
        The datalist (also written to ``out/datalist.json``), or ``{}`` when stopped early.
    """
    out = Path(out)
    settings.validate()
    if (synthetic_filter is None) != (not settings.filter):
        raise BusmonaiInputError("a filter needs its settings recorded (settings.filter) and the filter models")
    if settings.mode != "text" and models.controlnet is None and not getattr(models.ldm, "mask_channels", 0):
        raise BusmonaiInputError(f"--mode {settings.mode} needs a ControlNet checkpoint (--controlnet-ckpt) "
                                 "or an LDM trained with the mask as input (bundles/ldm/configs/mask_input.json)")
    resuming = _check_output(out, settings)
    if resuming and (out / PLAN_NAME).is_file():
        entries = json.loads((out / PLAN_NAME).read_text()).get("entries")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise BusmonaiInputError(f"{out / PLAN_NAME}: 'entries' is not a list of objects; generate into a new folder")
        masks = [np.asarray(open_image(output_path(out, e.get("mask")), fix="generate into a new folder").convert("L"))
                 for e in entries]
    else:
        entries, masks = make_plan(settings, scmg_masks)
        for entry, mask in zip(entries, masks):
            save_png(mask, output_path(out, entry["mask"]))
        write_json_atomic({"producer": PRODUCER, "settings": asdict(settings), "entries": entries}, out / PLAN_NAME)
    latent_shape = models.latent_shape(settings.image_size)
    n_batches = math.ceil(len(entries) / settings.batch_size)
    target = class_counts(settings)
    scores: dict[str, Any] = {}
    if synthetic_filter is not None and resuming and (out / FILTER_NAME).is_file():
        scores = json.loads((out / FILTER_NAME).read_text())
    kept: list[dict[str, Any]] = []
    done = 0
    pending = iter(range(len(entries)))
    for b in tqdm(range(n_batches), desc="generate", unit="batch", disable=not progress):
        if synthetic_filter is not None:
            # the next candidates of the classes still short of their count, in plan order: a class
            # that is full draws no more candidates (each entry has its own seed, so a batch's
            # composition does not change its images)
            short = {c for c, n in target.items() if sum(e["class"] == c for e in kept) < n}
            batch = [k for _, k in zip(range(settings.batch_size), (k for k in pending if entries[k]["class"] in short))]
            if not batch:
                break
        else:
            batch = list(range(b * settings.batch_size, min((b + 1) * settings.batch_size, len(entries))))
        batch_entries, batch_masks = [entries[k] for k in batch], [masks[k] for k in batch]
        if not all(output_path(out, e.get("image")).is_file() for e in batch_entries):
            images = _generate_batch(models, settings, batch_entries, batch_masks, latent_shape)
            for entry, image in zip(batch_entries, images):
                save_png((image[0].cpu().numpy() * 255).round().astype(np.uint8), output_path(out, entry["image"]))
            done += 1
        if synthetic_filter is not None:
            kept += _filter_batch(out, batch_entries, batch_masks, synthetic_filter, scores, target, kept)
        if stop_after_batches is not None and done >= stop_after_batches:
            return {}
    if synthetic_filter is not None:
        short = {c: n - sum(e["class"] == c for e in kept) for c, n in target.items()}
        if any(v > 0 for v in short.values()):
            raise BusmonaiInputError(
                f"the filter kept {len(kept)} of {sum(target.values())} images after {len(scores)} candidates "
                f"(missing {short}); lower --filter-min-dice / --filter-min-class-prob or raise --filter-pool "
                f"(scores in {out / FILTER_NAME})")
    datalist = {
        "name": "synthetic", "producer": PRODUCER, "synthetic": True,
        "size": [settings.image_size, settings.image_size], "seed": settings.seed,
        "settings": asdict(settings),
        "counts": {"training": dict(sorted(Counter(e["class"] for e in (kept if synthetic_filter else entries)).items()))},
        "training": kept if synthetic_filter is not None else entries, "validation": [], "test": [],
    }
    if synthetic_filter is not None:
        datalist["filter"] = synthetic_filter.record(len(kept), sum(not s["kept"] for s in scores.values()))
    write_json_atomic(datalist, out / DATALIST_NAME)
    if sheet and settings.background:
        write_background_sheet(out, entries)
    elif sheet and settings.mode != "text":
        write_sheet(out, models, settings, masks)
    return datalist
