"""Deterministic B-mode breast-ultrasound phantom written in BUSI's folder layout.

The phantom is the project's embedded default data (``busmonai phantom``, ``busmonai demo``) and
the fixture of the tests of every later stage, so it is small, fast (about 25 ms per 192 x 256
image on one CPU core, PNG writing included; 60 images in about 1.5 s), byte-reproducible, and its
classes differ the way BI-RADS says benign and malignant masses differ.

Model (a simplified version of the convolution model of speckle used by Field II-like
simulators; Jensen, *Estimation of Blood Velocities Using Ultrasound*, 1996; Burckhardt, IEEE
Trans. Sonics Ultrason. 25:1, 1978):

1. **Geometry.** The image is a linear-array field of view ``FOV_DEPTH_MM`` deep with square
   pixels (``pixel = FOV_DEPTH_MM / height``); rows are depth, columns lateral position.
2. **Echogenicity map** (dB relative to fibroglandular tissue) of the breast's layers, separated
   by wavy boundaries (smooth random curves): a bright skin line, dark subcutaneous fat with
   fat lobules outlined by bright Cooper's-ligament septa, bright laterally streaked
   fibroglandular tissue with fat islands, a thin dark retromammary fat layer and the striated
   pectoral muscle; specular interfaces (fasciae) add thin bright lines.
3. **Lesions** replace tissue inside a star-shaped outline ``r(theta) = 1 + sum_k a_k cos(k theta
   + phi_k) + spikes``, stretched to a sampled bounding box, following the BI-RADS mass
   descriptors (ACR BI-RADS Atlas, 5th ed., 2013; Stavros et al., Radiology 196:123, 1995):

   ========================  ===========================  ====================================
   descriptor                benign                       malignant
   ========================  ===========================  ====================================
   shape                     oval, low-order harmonics    irregular: harmonics k <= 7 + spikes
   orientation               parallel (wider than tall)   not parallel (taller than wide)
   margin                    circumscribed: sharp edge,   spiculated / angular, blurred edge,
                             sometimes a thin capsule     often an echogenic halo
   echo pattern              anechoic (cyst, 35 %) or     hypoechoic, heterogeneous, sometimes
                             homogeneous hypoechoic       micro-calcifications (bright specks)
   posterior features        enhancement (low             shadowing (high attenuation)
                             attenuation)
   ========================  ===========================  ====================================

   Posterior enhancement and shadowing are not painted on: they follow from the lesion's
   attenuation coefficient through the depth integral of step 5. The interior echo level is a
   smooth random field (a few dB of spread for malignant, about 1 dB for benign); the edge is a
   ``tanh`` transition of the signed distance to the outline (sharp for benign, about 1-2 px for
   malignant, never wider than ``EDGE_MAX_FRACTION`` of the lesion); micro-calcifications are Poisson
   distributed (``calcifications_per_cm2``) in half of the malignant lesions. Bounding boxes span
   ``LESION_SIZE_RANGE`` of the image width (their longer side), centred in the fibroglandular
   layer and fully inside the image. ``EXTRA_LESION_PROBABILITY`` of the benign cases carry a
   second small benign lesion that does not touch the first (BUSI stores such lesions as
   ``_mask_1.png``).
4. **Scatterers.** Circular complex Gaussian amplitudes, one per pixel at a random sub-pixel
   position (fully developed speckle), scaled by ``10 ** (echogenicity_db / 20)``;
   micro-calcifications are added as strong point reflectors (``CALCIFICATION_DB``).
5. **Attenuation and TGC.** Two-way loss ``2 * integral alpha(z) dz`` with ``alpha`` =
   ``ATTENUATION_DB_PER_CM_MHZ`` x ``CENTER_FREQUENCY_MHZ`` in tissue and a per-lesion multiple of
   it inside lesions, blurred laterally by the beam width; time-gain compensation adds back
   ``TGC_COMPENSATION`` of the nominal tissue loss, leaving a mild darkening with depth.
6. **Beam formation.** Convolution (``scipy.signal.fftconvolve``) of the scatterer field with the
   point-spread function in complex base band (IQ): the RF pulse is a Gaussian-modulated cosine
   along depth times a Gaussian beam profile laterally; IQ demodulation at the centre frequency
   removes the carrier and leaves the complex Gaussian ``exp(-z^2 / 2 s_z^2 - x^2 / 2 s_x^2)``
   (the pixel pitch could not sample the RF carrier anyway). ``PSF_AXIAL_SIGMA_MM`` and
   ``PSF_LATERAL_SIGMA_MM`` are effective display-resolution widths (beam + scan conversion).
   Spatial compounding, as breast scanners do: the beam is steered to ``COMPOUND_ANGLES_DEG``
   (PSF rotated; each scatterer seen with the round-trip phase ``2 k0 (z cos a + x sin a)``, so
   the speckle decorrelates between angles) and the detected envelopes are averaged. Complex
   Gaussian receiver noise (``NOISE_DB``) sets the floor seen in anechoic regions.
7. **Display.** Envelope detection ``|IQ|`` (averaged over the compounding angles), log
   compression to a dynamic range drawn from ``DYNAMIC_RANGE_DB_RANGE`` dB with the top at
   ``DISPLAY_MAX_DB`` (+- ``GAIN_JITTER_DB``), mapped to uint8.

Normal cases are tissue only. Not modelled: depth-dependent focusing, refraction (lateral edge
shadows), reverberation, rib shadows, lesion mass effect on the surrounding layers.

Every case draws from its own generator ``np.random.default_rng([seed, class_id, k])``, so a case
does not depend on how many others are written, and the PNG bytes are identical across runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import fft, ndimage, signal
from tqdm import tqdm

from busmonai.clinical.classes import IMAGE_CLASSES
from busmonai.files import atomic_directory
from busmonai.errors import BusmonaiInputError

PHANTOM_CLASSES: tuple[str, ...] = IMAGE_CLASSES
"""Class folders of the dataset, in BUSI's spelling; the index is the class id of the seed."""

PHANTOM_INDEX = "phantom.json"
PHANTOM_PRODUCER = "busmonai phantom"
MIN_SIZE = 32
"""Smallest accepted image height or width (px)."""

# --- imaging geometry and transducer ---------------------------------------------------------
FOV_DEPTH_MM = 40.0
"""Imaged depth (mm); pixels are square, so the lateral width is ``width * FOV_DEPTH_MM / height``."""
CENTER_FREQUENCY_MHZ = 7.5
"""Transmit centre frequency of a linear breast probe (MHz)."""
PSF_AXIAL_SIGMA_MM = 0.28
"""Axial Gaussian width of the IQ point-spread function (mm)."""
PSF_LATERAL_SIGMA_MM = 0.55
"""Lateral Gaussian width of the beam (mm)."""
SPEED_OF_SOUND_MM_PER_US = 1.54
"""Speed of sound in soft tissue (mm / us)."""
COMPOUND_ANGLES_DEG = (-10.0, 0.0, 10.0)
"""Steering angles of spatial compounding; their envelopes are averaged (speckle reduction)."""
PSF_MIN_SIGMA_PX = 0.5
"""Lower bound of the PSF widths in pixels, so coarse grids still sample the PSF."""
PSF_TRUNCATE = 3.0
"""PSF support in standard deviations."""

# --- attenuation and time-gain compensation ----------------------------------------------------
ATTENUATION_DB_PER_CM_MHZ = 0.75
"""Soft-tissue attenuation slope (dB / cm / MHz), one way."""
TGC_COMPENSATION = 0.6
"""Fraction of the nominal tissue loss that time-gain compensation restores."""
SHADOW_BLUR_MM = 1.0
"""Lateral blur (mm) of the lesion-induced attenuation change (beam width at depth)."""

# --- display ------------------------------------------------------------------------------------
DISPLAY_MAX_DB = 16.0
"""Echo level (dB re fibroglandular tissue) shown as white."""
DYNAMIC_RANGE_DB_RANGE = (50.0, 60.0)
"""Log-compression dynamic range (dB), drawn per case."""
GAIN_JITTER_DB = 2.0
"""Per-case overall gain change (dB), uniform in +-this."""
NOISE_DB = -34.0
"""RMS receiver noise (dB re fibroglandular tissue): the floor of anechoic regions."""

# --- tissue layers (depths in mm, echogenicity in dB re fibroglandular tissue) -----------------
SKIN_BOTTOM_MM = (1.0, 1.6)
SKIN_DB = 2.0
FAT_BOTTOM_MM = (5.0, 10.0)
FAT_DB = -17.0
SEPTA_DB = 11.0
"""Brightness of Cooper's ligaments / lobule septa over fat."""
SEPTA_WIDTH = 0.18
"""Septa are the level set ``|field| < SEPTA_WIDTH`` of a unit-variance smooth field."""
FAT_LOBULE_MM = (1.0, 2.2)
"""Correlation lengths (axial, lateral) of the field whose zero set draws the septa."""
GLAND_BOTTOM_MM = (23.0, 29.0)
GLAND_DB = 0.0
GLAND_COARSE_DB = 4.5
GLAND_COARSE_MM = (1.2, 4.0)
GLAND_STREAK_DB = 4.0
GLAND_STREAK_MM = (0.2, 1.6)
"""Thin laterally elongated streaks of the fibroglandular texture."""
LIGAMENT_DB = 8.0
"""Brightness of the thin curved ligament lines crossing the fibroglandular layer."""
LIGAMENT_WIDTH = 0.15
LIGAMENT_MM = (1.5, 6.0)
"""Correlation lengths (axial, lateral) of the field whose zero set draws the ligaments."""
FAT_ISLAND_LEVEL = 1.8
"""Fat islands inside the gland where a smooth unit field exceeds this level."""
RETRO_FAT_MM = (1.5, 3.5)
"""Thickness of the retromammary fat layer."""
MUSCLE_DB = -15.0
MUSCLE_STRIATION_DB = 4.0
MUSCLE_STRIATION_MM = (0.3, 5.0)
INTERFACE_DB = (5.0, 3.0, 8.0)
"""Specular brightening of the skin/fat, fat/gland and retromammary-fat/muscle interfaces."""
INTERFACE_WIDTH_MM = 0.2
BOUNDARY_WAVE_MM = (0.15, 1.5, 2.0, 0.5)
"""Waviness amplitude (mm) of the skin, fat, gland and retromammary boundaries."""
BOUNDARY_TILT_MM = (0.0, 1.5, 3.0, 0.5)
"""Largest depth change (mm) across the image from a random tilt of the same boundaries."""
BOUNDARY_WAVELENGTH_MM = 8.0
"""Correlation length (mm) of the wavy boundaries."""

# --- lesions ------------------------------------------------------------------------------------
LESION_SIZE_RANGE = (0.12, 0.45)
"""Longer side of a lesion's bounding box as a fraction of the image width."""
EXTRA_LESION_SIZE_RANGE = (0.08, 0.14)
"""Longer side of the second, small benign lesion, as a fraction of the image width."""
MAX_LESION_HEIGHT = 0.7
"""Largest bounding-box height as a fraction of the image height."""
MIN_LESION_PX = 4
"""Smallest bounding-box side (px)."""
BENIGN_ASPECT = (1.3, 2.0)
"""Width / height of benign bounding boxes (wider than tall: parallel orientation)."""
MALIGNANT_ASPECT = (1.15, 1.6)
"""Height / width of malignant bounding boxes (taller than wide: not parallel)."""
CYST_PROBABILITY = 0.35
"""Fraction of benign lesions that are anechoic cysts."""
EXTRA_LESION_PROBABILITY = 0.1
"""Fraction of benign cases with a second lesion (stored as ``_mask_1.png``)."""
EXTRA_LESION_GAP_PX = 3
"""Least distance (px) between the second lesion and the first."""
PLACEMENT_TRIES = 30
IMAGE_MARGIN_PX = 2
"""Lesion bounding boxes keep this distance from the image border."""
MIN_RADIUS = 0.35
"""Lower bound of the outline's radial function (keeps it star-shaped and connected)."""
OUTLINE_SAMPLES = 1024
EDGE_MAX_FRACTION = 0.06
"""A lesion's edge blur (tanh width, px) is at most this fraction of its smaller side, so small
blurred lesions keep a dark core."""
HALO_WIDTH_MM = (0.6, 1.5)
"""Thickness range of the echogenic halo around malignant lesions."""
CAPSULE_WIDTH_PX = 0.7
"""Width of the thin echogenic capsule line of circumscribed benign lesions (px)."""
CALCIFICATION_DB = 14.0
"""Amplitude of a micro-calcification point reflector (dB re fibroglandular tissue)."""


@dataclass(frozen=True)
class _LesionKind:
    """Ranges from which one lesion's appearance is drawn (dB, mm, multiples of tissue alpha)."""

    interior_db: tuple[float, float]
    heterogeneity_db: tuple[float, float]
    heterogeneity_mm: float
    edge_mm: tuple[float, float]
    halo_db: tuple[float, float]
    halo_probability: float
    capsule_db: tuple[float, float]
    capsule_probability: float
    attenuation_ratio: tuple[float, float]
    harmonic_orders: tuple[int, int]
    harmonic_amplitude: float
    spikes: tuple[int, int]
    spike_amplitude: tuple[float, float]
    spike_width_rad: tuple[float, float]
    calcifications_per_cm2: float
    calcification_probability: float


_CYST = _LesionKind(
    interior_db=(-48.0, -42.0), heterogeneity_db=(0.0, 0.5), heterogeneity_mm=1.0,
    edge_mm=(0.05, 0.15), halo_db=(0.0, 0.0), halo_probability=0.0,
    capsule_db=(3.0, 6.0), capsule_probability=0.6, attenuation_ratio=(0.02, 0.1),
    harmonic_orders=(2, 3), harmonic_amplitude=0.03, spikes=(0, 0), spike_amplitude=(0.0, 0.0),
    spike_width_rad=(0.1, 0.1), calcifications_per_cm2=0.0, calcification_probability=0.0,
)  # fmt: skip
_FIBROADENOMA = _LesionKind(
    interior_db=(-25.0, -19.0), heterogeneity_db=(0.5, 1.5), heterogeneity_mm=1.5,
    edge_mm=(0.1, 0.25), halo_db=(0.0, 0.0), halo_probability=0.0,
    capsule_db=(3.0, 6.0), capsule_probability=0.5, attenuation_ratio=(0.3, 0.7),
    harmonic_orders=(2, 4), harmonic_amplitude=0.05, spikes=(0, 0), spike_amplitude=(0.0, 0.0),
    spike_width_rad=(0.1, 0.1), calcifications_per_cm2=0.0, calcification_probability=0.0,
)  # fmt: skip
_CARCINOMA = _LesionKind(
    interior_db=(-28.0, -21.0), heterogeneity_db=(4.5, 7.0), heterogeneity_mm=1.0,
    edge_mm=(0.15, 0.45), halo_db=(4.0, 8.0), halo_probability=0.7,
    capsule_db=(0.0, 0.0), capsule_probability=0.0, attenuation_ratio=(1.6, 2.6),
    harmonic_orders=(2, 7), harmonic_amplitude=0.09, spikes=(3, 9), spike_amplitude=(0.2, 0.5),
    spike_width_rad=(0.12, 0.25), calcifications_per_cm2=5.0, calcification_probability=0.5,
)  # fmt: skip


@dataclass(frozen=True)
class _Grid:
    """Pixel grid of one image and its physical pitch."""

    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def pixel_mm(self) -> float:
        return FOV_DEPTH_MM / self.height

    def px(self, mm: float | np.ndarray) -> float | np.ndarray:
        """Convert millimetres to pixels."""
        return mm / self.pixel_mm

    def depth_mm(self) -> np.ndarray:
        """Depth of each row (mm), as an (H, 1) column."""
        return ((np.arange(self.height, dtype=np.float64) + 0.5) * self.pixel_mm)[:, None]


@dataclass(frozen=True)
class _Anatomy:
    """Tissue echogenicity and the layer boundaries (row, per column) lesions are placed by."""

    echo_db: np.ndarray
    skin_bottom: np.ndarray
    gland_top: np.ndarray
    gland_bottom: np.ndarray


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: tuple[float, ...]) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with Gaussian correlation (periodic, by FFT)."""
    spectrum = fft.rfftn(rng.standard_normal(shape, dtype=np.float32))
    freqs = [fft.fftfreq(n) for n in shape[:-1]] + [fft.rfftfreq(shape[-1])]
    grids = np.meshgrid(*freqs, indexing="ij", sparse=True)
    exponent = sum((s * f) ** 2 for s, f in zip(sigma_px, grids))
    field = fft.irfftn(spectrum * np.exp(-2.0 * np.pi**2 * exponent).astype(np.float32), s=shape)
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def _wavy_boundary(
    rng: np.random.Generator, grid: _Grid, depth_mm: float, amplitude_mm: float, tilt_mm: float
) -> np.ndarray:
    """Row position (px, float) of a layer boundary for every column: mean depth, tilt and waves."""
    wave = _smooth_noise(rng, (grid.width,), (grid.px(BOUNDARY_WAVELENGTH_MM),))
    tilt = rng.uniform(-tilt_mm, tilt_mm) * (np.linspace(-0.5, 0.5, grid.width))
    return grid.px(depth_mm + amplitude_mm * wave + tilt)


def _field(rng: np.random.Generator, grid: _Grid, correlation_mm: tuple[float, float]) -> np.ndarray:
    """Unit smooth field on the image grid with (axial, lateral) correlation lengths in mm."""
    return _smooth_noise(rng, grid.shape, (grid.px(correlation_mm[0]), grid.px(correlation_mm[1])))


def _tissue(rng: np.random.Generator, grid: _Grid) -> _Anatomy:
    """Layered breast echogenicity (dB) with wavy boundaries and layer textures."""
    skin, fat, gland, retro = (
        _wavy_boundary(rng, grid, _uniform(rng, depth), wave, tilt)
        for depth, wave, tilt in zip(
            (SKIN_BOTTOM_MM, FAT_BOTTOM_MM, GLAND_BOTTOM_MM, RETRO_FAT_MM), BOUNDARY_WAVE_MM, BOUNDARY_TILT_MM
        )
    )
    fat = np.maximum(fat, skin + 1.0)
    retro = gland + np.maximum(retro, 1.0)

    septa = np.exp(-((_field(rng, grid, FAT_LOBULE_MM) / SEPTA_WIDTH) ** 2))
    fat_db = FAT_DB + SEPTA_DB * septa
    coarse = _field(rng, grid, GLAND_COARSE_MM)
    streak = _field(rng, grid, GLAND_STREAK_MM)
    islands = 1.0 / (1.0 + np.exp(-(_field(rng, grid, GLAND_COARSE_MM) - FAT_ISLAND_LEVEL) / 0.1))
    ligaments = np.exp(-((_field(rng, grid, LIGAMENT_MM) / LIGAMENT_WIDTH) ** 2))
    gland_db = GLAND_DB + GLAND_COARSE_DB * coarse + GLAND_STREAK_DB * streak + LIGAMENT_DB * ligaments
    gland_db = gland_db * (1 - islands) + fat_db * islands
    muscle_db = MUSCLE_DB + MUSCLE_STRIATION_DB * _field(rng, grid, MUSCLE_STRIATION_MM)

    row = np.arange(grid.height, dtype=np.float64)[:, None]
    echo = np.select(
        [row < skin, row < fat, row < gland, row < retro],
        [np.full(grid.shape, SKIN_DB), fat_db, gland_db, np.full(grid.shape, FAT_DB)],
        default=muscle_db,
    )
    width_px = max(grid.px(INTERFACE_WIDTH_MM), 0.5)
    for boundary, gain_db in zip((skin, fat, retro), INTERFACE_DB):
        echo += gain_db * np.exp(-(((row - boundary) / width_px) ** 2))
    return _Anatomy(echo_db=echo, skin_bottom=skin, gland_top=fat, gland_bottom=gland)


@dataclass(frozen=True)
class _Outline:
    """Star-shaped unit outline: radius ``1 + harmonics + triangular spikes`` over angle."""

    orders: np.ndarray
    amplitudes: np.ndarray
    phases: np.ndarray
    spike_angles: np.ndarray
    spike_amplitudes: np.ndarray
    spike_widths: np.ndarray

    def radius(self, theta: np.ndarray) -> np.ndarray:
        r = 1.0 + np.cos(np.multiply.outer(theta, self.orders) + self.phases) @ self.amplitudes
        if self.spike_angles.size:
            delta = np.angle(np.exp(1j * np.subtract.outer(theta, self.spike_angles)))
            r = r + np.clip(1.0 - np.abs(delta) / self.spike_widths, 0.0, None) @ self.spike_amplitudes
        return np.maximum(r, MIN_RADIUS)

    def extent(self) -> tuple[float, float, float, float]:
        """``(xmin, xmax, ymin, ymax)`` of the outline in unit coordinates."""
        theta = np.linspace(-np.pi, np.pi, OUTLINE_SAMPLES, endpoint=False)
        r = self.radius(theta)
        x, y = r * np.cos(theta), r * np.sin(theta)
        return float(x.min()), float(x.max()), float(y.min()), float(y.max())


def _sample_outline(rng: np.random.Generator, kind: _LesionKind) -> _Outline:
    orders = np.arange(kind.harmonic_orders[0], kind.harmonic_orders[1] + 1)
    n_spikes = int(rng.integers(kind.spikes[0], kind.spikes[1] + 1))
    return _Outline(
        orders=orders,
        amplitudes=rng.uniform(0.0, kind.harmonic_amplitude, orders.size) / np.sqrt(orders / orders[0]),
        phases=rng.uniform(0.0, 2 * np.pi, orders.size),
        spike_angles=rng.uniform(-np.pi, np.pi, n_spikes),
        spike_amplitudes=rng.uniform(*kind.spike_amplitude, n_spikes),
        spike_widths=rng.uniform(*kind.spike_width_rad, n_spikes),
    )


def _box_size(
    rng: np.random.Generator, grid: _Grid, malignant: bool, size_range: tuple[float, float]
) -> tuple[float, float]:
    """Bounding-box (width, height) in px: longer side from ``size_range`` x width, class aspect."""
    longer = _uniform(rng, size_range) * grid.width
    aspect = _uniform(rng, MALIGNANT_ASPECT if malignant else BENIGN_ASPECT)
    width, height = (longer / aspect, longer) if malignant else (longer, longer / aspect)
    shrink = min(1.0, MAX_LESION_HEIGHT * grid.height / height, (grid.width - 2 * IMAGE_MARGIN_PX - 1) / width)
    return max(width * shrink, MIN_LESION_PX), max(height * shrink, MIN_LESION_PX)


def _place_lesion(
    rng: np.random.Generator,
    grid: _Grid,
    anatomy: _Anatomy,
    outline: _Outline,
    box: tuple[float, float],
    forbidden: np.ndarray | None = None,
) -> np.ndarray | None:
    """Rasterise ``outline`` stretched to ``box`` at a random spot of the fibroglandular layer.

    Returns:
        Boolean (H, W) mask, or None when no spot avoiding ``forbidden`` was found.
    """
    box_w, box_h = box
    xmin, xmax, ymin, ymax = outline.extent()
    sx, sy = box_w / (xmax - xmin), box_h / (ymax - ymin)
    lo = IMAGE_MARGIN_PX
    top_floor = min(max(float(anatomy.skin_bottom.max()) + grid.px(1.0), lo), grid.height - lo - box_h)
    for _ in range(PLACEMENT_TRIES):
        left = rng.uniform(lo, grid.width - lo - box_w)
        column = int(np.clip(left + box_w / 2, 0, grid.width - 1))
        band_top = float(anatomy.gland_top[column]) + box_h / 2
        band_bottom = float(anatomy.gland_bottom[column]) - box_h / 2
        if band_bottom < band_top:  # lesion taller than the layer: centre it on the layer
            band_top = band_bottom = (band_top + band_bottom) / 2
        centre = rng.uniform(band_top, band_bottom)
        top = float(np.clip(centre - box_h / 2, max(top_floor, lo), grid.height - lo - box_h))
        rows = np.arange(int(top), min(int(np.ceil(top + box_h)) + 1, grid.height))
        cols = np.arange(int(left), min(int(np.ceil(left + box_w)) + 1, grid.width))
        v, u = np.broadcast_arrays((rows[:, None] + 0.5 - top) / sy + ymin, (cols[None, :] + 0.5 - left) / sx + xmin)
        mask = np.zeros(grid.shape, dtype=bool)
        mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = np.hypot(u, v) < outline.radius(np.arctan2(v, u))
        if not mask.any():
            continue
        if forbidden is None or not (mask & forbidden).any():
            return mask
    return None


def _render_lesion(
    rng: np.random.Generator,
    grid: _Grid,
    mask: np.ndarray,
    kind: _LesionKind,
    echo_db: np.ndarray,
    attenuation: np.ndarray,
) -> list[tuple[int, int]]:
    """Blend one lesion into ``echo_db`` and ``attenuation`` (in place).

    Returns:
        Pixel positions of micro-calcification point reflectors.
    """
    rows, cols = np.nonzero(mask)
    smaller_side = min(np.ptp(rows), np.ptp(cols)) + 1
    edge_px = float(np.clip(grid.px(_uniform(rng, kind.edge_mm)), 0.3, max(0.3, EDGE_MAX_FRACTION * smaller_side)))
    halo = rng.random() < kind.halo_probability
    halo_db = _uniform(rng, kind.halo_db) if halo else 0.0
    halo_px = max(grid.px(_uniform(rng, HALO_WIDTH_MM)), 0.7) if halo else 1.0
    capsule_db = _uniform(rng, kind.capsule_db) if rng.random() < kind.capsule_probability else 0.0
    interior_db = _uniform(rng, kind.interior_db)
    heterogeneity_db = _uniform(rng, kind.heterogeneity_db)
    ratio = _uniform(rng, kind.attenuation_ratio)

    pad = int(np.ceil(3 * max(edge_px, halo_px * 2))) + 2
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, grid.height)
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, grid.width)
    crop = mask[r0:r1, c0:c1]
    inside = np.pad(crop, 1, mode="constant")  # a frame of background so both transforms see an edge
    depth_in = ndimage.distance_transform_edt(inside)[1:-1, 1:-1]
    depth_out = ndimage.distance_transform_edt(~inside)[1:-1, 1:-1]
    signed = np.where(crop, depth_in - 0.5, 0.5 - depth_out)  # px from the edge, positive inside
    weight = 0.5 * (1.0 + np.tanh(signed / edge_px))

    texture = _smooth_noise(rng, crop.shape, (grid.px(kind.heterogeneity_mm),) * 2)
    interior = interior_db + heterogeneity_db * texture
    region = echo_db[r0:r1, c0:c1]
    region[:] = (1.0 - weight) * region + weight * interior
    region += halo_db * np.exp(-(((signed + halo_px) / halo_px) ** 2)) * (signed < 0)
    region += capsule_db * np.exp(-((signed / CAPSULE_WIDTH_PX) ** 2))
    attenuation[r0:r1, c0:c1] += weight * (ratio - 1.0)

    area_cm2 = rows.size * (grid.pixel_mm / 10.0) ** 2
    n_calc = int(rng.poisson(kind.calcifications_per_cm2 * area_cm2))
    if n_calc == 0 or rng.random() >= kind.calcification_probability:
        return []
    picks = rng.choice(rows.size, size=min(n_calc, rows.size), replace=False)
    return [(int(rows[i]), int(cols[i])) for i in np.sort(picks)]


def _form_image(
    rng: np.random.Generator,
    grid: _Grid,
    echo_db: np.ndarray,
    attenuation: np.ndarray,
    points: list[tuple[int, int]],
) -> np.ndarray:
    """Scatterers -> attenuation and TGC -> compounded IQ PSF convolution -> envelope -> log -> uint8."""
    shape = grid.shape
    amplitude = (10.0 ** (echo_db / 20.0)).astype(np.float32)
    scatter = amplitude * _complex_gaussian(rng, shape)
    for (row, col), phase in zip(points, rng.uniform(0, 2 * np.pi, len(points))):
        scatter[row, col] += 10.0 ** (CALCIFICATION_DB / 20.0) * np.exp(1j * phase)

    alpha_db_per_mm = ATTENUATION_DB_PER_CM_MHZ * CENTER_FREQUENCY_MHZ / 10.0
    excess = attenuation - 1.0
    excess_db = 2.0 * alpha_db_per_mm * grid.pixel_mm * (np.cumsum(excess, axis=0) - 0.5 * excess)
    excess_db = ndimage.gaussian_filter1d(excess_db, max(grid.px(SHADOW_BLUR_MM), 0.5), axis=1, mode="nearest")
    gain_db = _uniform(rng, (-GAIN_JITTER_DB, GAIN_JITTER_DB))
    tgc_db = -2.0 * alpha_db_per_mm * grid.depth_mm() * (1.0 - TGC_COMPENSATION) - excess_db + gain_db
    scatter *= (10.0 ** (tgc_db / 20.0)).astype(np.float32)

    # Scatterers sit at random sub-pixel positions; a beam steered by angle a sees each with the
    # round-trip phase 2 k0 (z cos a + x sin a), which decorrelates the speckle between angles.
    wavenumber = 2.0 * np.pi * CENTER_FREQUENCY_MHZ / SPEED_OF_SOUND_MM_PER_US
    rad_per_px = np.float32(2.0 * wavenumber * grid.pixel_mm)
    z_rad = rad_per_px * (np.arange(grid.height, dtype=np.float32)[:, None] + rng.random(shape, dtype=np.float32))
    x_rad = rad_per_px * (np.arange(grid.width, dtype=np.float32)[None, :] + rng.random(shape, dtype=np.float32))
    noise_rms = 10.0 ** (NOISE_DB / 20.0)
    envelope = np.zeros(shape, dtype=np.float32)
    steered = np.empty(shape, dtype=np.complex64)
    for angle in np.deg2rad(COMPOUND_ANGLES_DEG):
        phase = z_rad * np.float32(np.cos(angle)) + x_rad * np.float32(np.sin(angle))
        steered.real, steered.imag = np.cos(phase), -np.sin(phase)
        iq = signal.fftconvolve(scatter * steered, _psf_iq(grid, angle), mode="same")
        iq += noise_rms * _complex_gaussian(rng, shape)
        envelope += np.abs(iq)
    envelope_db = 20.0 * np.log10(envelope / len(COMPOUND_ANGLES_DEG) + 1e-12)
    dynamic_range = _uniform(rng, DYNAMIC_RANGE_DB_RANGE)
    grey = (envelope_db - (DISPLAY_MAX_DB - dynamic_range)) * (255.0 / dynamic_range)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def _complex_gaussian(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Circular complex Gaussian samples of unit mean power (complex64)."""
    out = np.empty(shape, dtype=np.complex64)
    out.real = rng.standard_normal(shape, dtype=np.float32)
    out.imag = rng.standard_normal(shape, dtype=np.float32)
    out *= np.float32(np.sqrt(0.5))
    return out


def _psf_iq(grid: _Grid, angle: float) -> np.ndarray:
    """Base-band (IQ) point-spread function of a beam steered by ``angle`` (rad), unit energy.

    Unit energy makes the mean speckle power equal to the local echogenicity.
    """
    sigma_z = max(grid.px(PSF_AXIAL_SIGMA_MM), PSF_MIN_SIGMA_PX)
    sigma_x = max(grid.px(PSF_LATERAL_SIGMA_MM), PSF_MIN_SIGMA_PX)
    half = np.ceil(PSF_TRUNCATE * max(sigma_z, sigma_x))
    z = np.arange(-half, half + 1)[:, None]
    x = np.arange(-half, half + 1)[None, :]
    along = z * np.cos(angle) + x * np.sin(angle)
    across = x * np.cos(angle) - z * np.sin(angle)
    psf = np.exp(-(along**2) / (2 * sigma_z**2) - across**2 / (2 * sigma_x**2))
    return (psf / np.sqrt(np.sum(psf**2))).astype(np.complex64)


def _check_size(height: int, width: int) -> None:
    if int(height) < MIN_SIZE or int(width) < MIN_SIZE:
        raise BusmonaiInputError(
            f"phantom image size {height} x {width} is too small; use a height and width of at least {MIN_SIZE} px"
        )


def simulate_case_lesions(
    label: str, rng: np.random.Generator, height: int = 192, width: int = 256
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Simulate one B-mode image and one mask per lesion.

    Args:
        label: ``"benign"``, ``"malignant"`` or ``"normal"``.
        rng: the case's random generator (all randomness is drawn from it).
        height: image height (px, depth), at least ``MIN_SIZE``.
        width: image width (px, lateral), at least ``MIN_SIZE``.

    Returns:
        ``(image, masks)``: uint8 (H, W) image and a list of uint8 (H, W) masks with values 0/255,
        the main lesion first; empty for ``"normal"``, two masks for some benign cases.

    Raises:
        BusmonaiInputError: unknown label or an image smaller than ``MIN_SIZE``.
    """
    if label not in PHANTOM_CLASSES:
        raise BusmonaiInputError(f"unknown phantom label {label!r}; use one of {', '.join(PHANTOM_CLASSES)}")
    _check_size(height, width)
    grid = _Grid(int(height), int(width))
    anatomy = _tissue(rng, grid)
    echo_db = anatomy.echo_db
    attenuation = np.ones(grid.shape)
    lesions: list[np.ndarray] = []
    points: list[tuple[int, int]] = []
    if label != "normal":
        malignant = label == "malignant"
        plans = [LESION_SIZE_RANGE]
        if not malignant and rng.random() < EXTRA_LESION_PROBABILITY:
            plans.append(EXTRA_LESION_SIZE_RANGE)
        for size_range in plans:
            kind = _CARCINOMA if malignant else (_CYST if rng.random() < CYST_PROBABILITY else _FIBROADENOMA)
            outline = _sample_outline(rng, kind)
            box = _box_size(rng, grid, malignant, size_range)
            forbidden = ndimage.binary_dilation(lesions[0], iterations=EXTRA_LESION_GAP_PX) if lesions else None
            mask = _place_lesion(rng, grid, anatomy, outline, box, forbidden)
            if mask is None:
                continue
            points += _render_lesion(rng, grid, mask, kind, echo_db, attenuation)
            lesions.append(mask)
    image = _form_image(rng, grid, echo_db, attenuation, points)
    return image, [np.where(m, 255, 0).astype(np.uint8) for m in lesions]


def simulate_case(
    label: str, rng: np.random.Generator, height: int = 192, width: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate one B-mode image and its lesion mask.

    Args:
        label: ``"benign"``, ``"malignant"`` or ``"normal"``.
        rng: the case's random generator.
        height: image height (px), at least ``MIN_SIZE``.
        width: image width (px), at least ``MIN_SIZE``.

    Returns:
        ``(image, mask)``: uint8 (H, W) image and uint8 (H, W) mask with values 0/255, all zero for
        ``"normal"``. A second benign lesion, when present, is merged into the mask (logical OR,
        the project's datalist rule); :func:`simulate_case_lesions` keeps them apart.

    Raises:
        BusmonaiInputError: unknown label or an image smaller than ``MIN_SIZE``.
    """
    image, masks = simulate_case_lesions(label, rng, height, width)
    merged = np.zeros(image.shape, dtype=np.uint8)
    for mask in masks:
        np.maximum(merged, mask, out=merged)
    return image, merged


def phantom_counts(n: int, fractions: tuple[float, float, float] = (0.4, 0.4, 0.2)) -> dict[str, int]:
    """Images per class: ``round(n * fraction)`` for malignant and normal, the rest benign.

    Rounding is half-up. If rounding leaves benign negative, the larger of the other two gives
    way, so the counts always sum to ``n`` (e.g. ``n=2`` gives 1 benign, 1 malignant, 0 normal).
    """
    malignant, normal = (int(np.floor(n * f + 0.5)) for f in fractions[1:])
    while malignant + normal > n:
        if malignant >= normal:
            malignant -= 1
        else:
            normal -= 1
    return {"benign": n - malignant - normal, "malignant": malignant, "normal": normal}


def _validate(out: Path, n: int, seed: int, height: int, width: int, fractions: tuple[float, float, float]) -> None:
    if int(n) != n or n < 1:
        raise BusmonaiInputError(f"phantom --n must be a positive number of images, got {n}")
    if int(seed) != seed or seed < 0:
        raise BusmonaiInputError(f"phantom --seed must be a non-negative integer, got {seed}")
    _check_size(height, width)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise BusmonaiInputError(
            f"phantom class fractions {tuple(fractions)} must be three non-negative numbers "
            "(benign, malignant, normal) that sum to 1"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not _is_phantom_folder(out):
        raise BusmonaiInputError(
            f"{out}: output folder exists and holds files 'busmonai phantom' did not write; choose an empty or new folder"
        )


def _is_phantom_folder(folder: Path) -> bool:
    """True if ``folder`` is an earlier output of this simulator (safe to replace)."""
    try:
        return json.loads((folder / PHANTOM_INDEX).read_text()).get("producer") == PHANTOM_PRODUCER
    except (OSError, ValueError, AttributeError):
        return False


def _save_png(array: np.ndarray, path: Path) -> None:
    """Save a uint8 (H, W) array as an 8-bit grey PNG (mode "L"; no timestamp, so bytes are stable)."""
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path, format="PNG")


def write_phantom_dataset(
    out: Path | str,
    n: int = 60,
    seed: int = 0,
    height: int = 192,
    width: int = 256,
    fractions: tuple[float, float, float] = (0.4, 0.4, 0.2),
    progress: bool = True,
) -> dict[str, int]:
    """Write a simulated dataset in BUSI's layout and names.

    Files: ``out/{benign,malignant,normal}/<cls> (k).png`` with ``<cls> (k)_mask.png`` (k from 1;
    empty masks for normal images, as in BUSI) and ``benign (k)_mask_1.png`` for a second lesion.
    The dataset is built in a temporary sibling folder and renamed to ``out`` at the end, so an
    interrupted run leaves nothing at ``out``.

    Args:
        out: new or empty folder to create.
        n: total number of images.
        seed: non-negative seed; case ``k`` of class ``c`` uses ``default_rng([seed, c, k])``.
        height: image height (px), at least ``MIN_SIZE``.
        width: image width (px), at least ``MIN_SIZE``.
        fractions: (benign, malignant, normal) shares, summing to 1; see :func:`phantom_counts`.
        progress: show a tqdm progress bar.

    Returns:
        Number of images written per class.

    Raises:
        BusmonaiInputError: bad argument, or ``out`` exists, is not empty and is not an earlier
            phantom output (those are replaced; ``out/phantom.json`` records the settings).
    """
    out = Path(os.path.abspath(out))
    _validate(out, n, seed, height, width, fractions)
    counts = phantom_counts(int(n), fractions)
    with atomic_directory(out, replace=True) as staging:
        with tqdm(total=int(n), desc=f"phantom {out.name}", unit="img", disable=not progress) as bar:
            for class_id, cls in enumerate(PHANTOM_CLASSES):
                folder = staging / cls
                folder.mkdir()
                for k in range(1, counts[cls] + 1):
                    rng = np.random.default_rng([int(seed), class_id, k])
                    image, masks = simulate_case_lesions(cls, rng, height, width)
                    _save_png(image, folder / f"{cls} ({k}).png")
                    for index, mask in enumerate(masks or [np.zeros_like(image)]):
                        suffix = "_mask" if index == 0 else f"_mask_{index}"
                        _save_png(mask, folder / f"{cls} ({k}){suffix}.png")
                    bar.update(1)
        settings = {"producer": PHANTOM_PRODUCER, "n": int(n), "seed": int(seed), "height": height,
                    "width": width, "fractions": list(fractions), "counts": counts}
        (staging / PHANTOM_INDEX).write_text(json.dumps(settings, indent=1) + "\n")
    return counts
