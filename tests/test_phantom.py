"""Tests of the B-mode phantom (busmonai.data.phantom): layout, determinism, BI-RADS-like classes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from busmonai.data import phantom
from busmonai.data.phantom import phantom_counts, simulate_case, simulate_case_lesions, write_phantom_dataset
from busmonai.errors import BusmonaiInputError

HEIGHT, WIDTH = 64, 80
NAME_RE = re.compile(r"^(?P<cls>benign|malignant|normal) \((?P<k>[1-9]\d*)\)(?P<mask>_mask(?:_(?P<extra>\d+))?)?\.png$")


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def _bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """100 small images: 40 benign, 40 malignant, 20 normal."""
    root = tmp_path_factory.mktemp("phantom100") / "Dataset_BUSI_with_GT"
    counts = write_phantom_dataset(root, n=100, seed=0, height=HEIGHT, width=WIDTH, progress=False)
    return root, counts


def _cases(root: Path, cls: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, first mask as bool) of every case of ``cls``, in k order."""
    count = len([p for p in (root / cls).iterdir() if NAME_RE.match(p.name) and not NAME_RE.match(p.name)["mask"]])
    return [
        (_load(root / cls / f"{cls} ({k}).png"), _load(root / cls / f"{cls} ({k})_mask.png") > 0)
        for k in range(1, count + 1)
    ]


def test_layout_and_names_are_busi(dataset: tuple[Path, dict[str, int]]) -> None:
    root, counts = dataset
    assert counts == {"benign": 40, "malignant": 40, "normal": 20}
    assert sorted(p.name for p in root.iterdir()) == ["benign", "malignant", "normal", "phantom.json"]
    assert not [p for p in root.parent.iterdir() if p.name != root.name], "staging folder left behind"
    for cls, count in counts.items():
        names = sorted(p.name for p in (root / cls).iterdir())
        matches = [NAME_RE.match(name) for name in names]
        assert all(matches), [n for n, m in zip(names, matches) if not m]
        assert {m["cls"] for m in matches} == {cls}
        images = sorted(int(m["k"]) for m in matches if not m["mask"])
        assert images == list(range(1, count + 1))
        for k in images:
            assert (root / cls / f"{cls} ({k})_mask.png").is_file()
        extras = [m for m in matches if m["extra"]]
        assert all(m["extra"] == "1" for m in extras)
        if cls != "benign":
            assert not extras


def test_counts_rule() -> None:
    assert phantom_counts(60) == {"benign": 24, "malignant": 24, "normal": 12}
    assert phantom_counts(2) == {"benign": 1, "malignant": 1, "normal": 0}
    assert phantom_counts(1) == {"benign": 1, "malignant": 0, "normal": 0}
    assert phantom_counts(7) == {"benign": 3, "malignant": 3, "normal": 1}
    for n in range(1, 40):
        for fractions in ((0.4, 0.4, 0.2), (0.0, 0.5, 0.5), (1.0, 0.0, 0.0), (0.1, 0.3, 0.6)):
            counts = phantom_counts(n, fractions)
            assert sum(counts.values()) == n and min(counts.values()) >= 0


def test_tiny_n_writes_benign_and_malignant(tmp_path: Path) -> None:
    counts = write_phantom_dataset(tmp_path / "two", n=2, height=32, width=32, progress=False)
    assert counts == {"benign": 1, "malignant": 1, "normal": 0}
    assert (tmp_path / "two" / "malignant" / "malignant (1)_mask.png").is_file()
    assert not list((tmp_path / "two" / "normal").iterdir())


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kwargs = {"n": 6, "height": 48, "width": 64, "progress": False}
    write_phantom_dataset(tmp_path / "a", seed=3, **kwargs)
    write_phantom_dataset(tmp_path / "b", seed=3, **kwargs)
    write_phantom_dataset(tmp_path / "c", seed=4, **kwargs)
    first, second, other = (_bytes(tmp_path / name) for name in "abc")
    assert first == second
    images = [name for name in first if not name.endswith("_mask.png")]
    assert all(first[name] != other.get(name) for name in images)


def test_a_case_does_not_depend_on_n(tmp_path: Path) -> None:
    write_phantom_dataset(tmp_path / "small", n=3, height=48, width=64, progress=False)
    write_phantom_dataset(tmp_path / "large", n=9, height=48, width=64, progress=False)
    for name in ("benign/benign (1).png", "malignant/malignant (1)_mask.png"):
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "large" / name).read_bytes()


def test_masks_binary_sized_and_inside(dataset: tuple[Path, dict[str, int]]) -> None:
    root, _ = dataset
    for cls in ("benign", "malignant", "normal"):
        for path in sorted((root / cls).glob("*.png")):
            array = _load(path)
            assert array.shape == (HEIGHT, WIDTH) and array.dtype == np.uint8
            if "_mask" not in path.name:
                continue
            assert set(np.unique(array)) <= {0, 255}
            if cls == "normal":
                assert not array.any()
                continue
            assert array.any(), path.name
            rows, cols = np.nonzero(array)
            assert rows.min() > 0 and cols.min() > 0, path.name
            assert rows.max() < HEIGHT - 1 and cols.max() < WIDTH - 1, path.name


def test_lesion_sizes_follow_the_spec(dataset: tuple[Path, dict[str, int]]) -> None:
    root, _ = dataset
    for cls in ("benign", "malignant"):
        for _, mask in _cases(root, cls):
            rows, cols = np.nonzero(mask)
            longer = max(np.ptp(rows), np.ptp(cols)) + 1
            assert 0.08 * WIDTH <= longer <= 0.5 * WIDTH


def _aspect(mask: np.ndarray) -> float:
    rows, cols = np.nonzero(mask)
    return (np.ptp(cols) + 1) / (np.ptp(rows) + 1)


def test_benign_wider_than_tall_malignant_taller_than_wide(dataset: tuple[Path, dict[str, int]]) -> None:
    root, _ = dataset
    benign = np.array([_aspect(m) for _, m in _cases(root, "benign")[:20]])
    malignant = np.array([_aspect(m) for _, m in _cases(root, "malignant")[:20]])
    assert benign.mean() > 1.2 and np.mean(benign > 1) >= 0.9
    assert malignant.mean() < 0.85 and np.mean(malignant < 1) >= 0.9


def test_lesions_are_hypoechoic(dataset: tuple[Path, dict[str, int]]) -> None:
    root, _ = dataset
    for cls in ("benign", "malignant"):
        darker = []
        for image, mask in _cases(root, cls):
            ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
            darker.append(image[mask].mean() < image[ring].mean())
        assert np.mean(darker) >= 0.9, cls


def _heterogeneity_and_edge(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Interior std of the speckle-smoothed image, and contrast across a 2-px band at the edge."""
    smooth = ndimage.gaussian_filter(image.astype(np.float64), 1.0)
    core = ndimage.binary_erosion(mask, iterations=2)
    core = core if core.sum() > 10 else mask
    inner = mask & ~ndimage.binary_erosion(mask, iterations=2)
    outer = ndimage.binary_dilation(mask, iterations=2) & ~mask
    return float(smooth[core].std()), float(smooth[outer].mean() - smooth[inner].mean())


def test_malignant_more_heterogeneous_and_less_sharp(dataset: tuple[Path, dict[str, int]]) -> None:
    root, _ = dataset
    benign = np.array([_heterogeneity_and_edge(i, m) for i, m in _cases(root, "benign")])
    malignant = np.array([_heterogeneity_and_edge(i, m) for i, m in _cases(root, "malignant")])
    assert malignant[:, 0].mean() > 1.5 * benign[:, 0].mean()
    assert malignant[:, 1].mean() < benign[:, 1].mean()


def test_posterior_enhancement_and_shadowing(dataset: tuple[Path, dict[str, int]]) -> None:
    """Below benign lesions the image is brighter than beside them; below malignant ones darker."""
    root, _ = dataset

    def posterior_minus_side(image: np.ndarray, mask: np.ndarray) -> float:
        rows, cols = np.nonzero(mask)
        width = np.ptp(cols) + 1
        below = slice(rows.max() + 2, min(HEIGHT, rows.max() + 2 + max((np.ptp(rows) + 1) // 2, 3)))
        centre = image[below, cols.min() + width // 4 : cols.max() - width // 4 + 1].astype(float)
        side = np.concatenate(
            [
                image[below, max(0, cols.min() - width) : max(0, cols.min() - width // 4)].ravel(),
                image[below, cols.max() + width // 4 + 1 : cols.max() + width + 1].ravel(),
            ]
        ).astype(float)
        return centre.mean() - side.mean() if centre.size and side.size else np.nan

    benign = np.array([posterior_minus_side(i, m) for i, m in _cases(root, "benign")])
    malignant = np.array([posterior_minus_side(i, m) for i, m in _cases(root, "malignant")])
    assert np.nanmean(benign) > 5 and np.nanmean(malignant) < -10


def test_speckle_present(dataset: tuple[Path, dict[str, int]]) -> None:
    root, _ = dataset
    for cls in ("benign", "malignant", "normal"):
        image = _load(root / cls / f"{cls} (1).png").astype(np.float64)
        local_mean = ndimage.uniform_filter(image, 3)
        local_std = np.sqrt(np.clip(ndimage.uniform_filter(image**2, 3) - local_mean**2, 0, None))
        assert np.median(local_std) > 5
        assert np.mean(local_std < 0.5) < 0.05
        assert len(np.unique(image)) > 64


def test_extra_benign_lesion_does_not_overlap(dataset: tuple[Path, dict[str, int]]) -> None:
    root, _ = dataset
    extras = sorted((root / "benign").glob("benign (*)_mask_1.png"))
    assert 1 <= len(extras) <= 12
    for extra in extras:
        second = _load(extra) > 0
        first = _load(extra.with_name(extra.name.replace("_mask_1", "_mask"))) > 0
        assert second.any() and first.any()
        assert not (first & second).any()
        assert second.sum() < first.sum() * 4


def test_simulate_case_api() -> None:
    for label in ("benign", "malignant", "normal"):
        image, mask = simulate_case(label, np.random.default_rng(0), height=40, width=56)
        assert image.shape == mask.shape == (40, 56)
        assert image.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert mask.any() == (label != "normal")
    with pytest.raises(BusmonaiInputError, match="unknown phantom label"):
        simulate_case("cyst", np.random.default_rng(0))
    with pytest.raises(BusmonaiInputError, match="at least"):
        simulate_case("benign", np.random.default_rng(0), height=16)


def test_simulate_case_merges_extra_lesions() -> None:
    seeds = [[0, 0, k] for k in range(1, 200)]
    seed = next(s for s in seeds if len(simulate_case_lesions("benign", np.random.default_rng(s), 48, 64)[1]) == 2)
    _, masks = simulate_case_lesions("benign", np.random.default_rng(seed), 48, 64)
    _, merged = simulate_case("benign", np.random.default_rng(seed), 48, 64)
    np.testing.assert_array_equal(merged, np.maximum(masks[0], masks[1]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "positive"),
        ({"height": 31}, "at least 32"),
        ({"width": 16}, "at least 32"),
        ({"fractions": (0.5, 0.4, 0.2)}, "sum to 1"),
        ({"fractions": (1.2, -0.4, 0.2)}, "non-negative"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BusmonaiInputError, match=message):
        write_phantom_dataset(tmp_path / "out", progress=False, **kwargs)
    assert not list(tmp_path.iterdir())


def test_error_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path / "out", n=-3, progress=False)


def test_non_empty_out_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BusmonaiInputError, match="empty"):
        write_phantom_dataset(out, n=3, height=32, width=32, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(BusmonaiInputError, match="empty"):
        write_phantom_dataset(afile, n=1, height=32, width=32, progress=False)


def test_empty_out_is_accepted(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert write_phantom_dataset(out, n=3, height=32, width=32, progress=False)["benign"] == 1
    assert (out / "benign" / "benign (1).png").is_file()


def test_crash_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = phantom.simulate_case_lesions

    def failing(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(phantom, "simulate_case_lesions", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_phantom_dataset(tmp_path / "out", n=5, height=32, width=32, progress=False)
    assert not list(tmp_path.iterdir())


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_phantom_dataset(tmp_path / "out", n=2, height=32, width=32, progress=True)
    assert "2/2" in capsys.readouterr().err


def test_readable_by_the_busi_reader(dataset: tuple[Path, dict[str, int]]) -> None:
    from busmonai.data.readers.busi import read_busi

    root, counts = dataset
    cases = read_busi(root)
    assert len(cases) == sum(counts.values())
    assert sum(len(c.masks) == 2 for c in cases) == len(list((root / "benign").glob("*_mask_1.png")))


def test_earlier_phantom_output_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    write_phantom_dataset(out, n=4, seed=0, height=32, width=32, progress=False)
    write_phantom_dataset(out, n=2, seed=1, height=32, width=32, progress=False)
    assert sum(1 for p in out.rglob("*.png") if "_mask" not in p.name) == 2
    assert '"seed": 1' in (out / "phantom.json").read_text()
