"""``busmonai.metrics`` and ``busmonai evaluate``: every metric on small inputs with known answers.

The Inception network runs on 48 phantom images (12 clean, 3 noise levels) once per module; the
feature cache serves the CLI test. References are written here independently of the library:
FID's trace term by the nuclear norm of the centred cross-Gram matrix (no ``sqrtm``), KID by an
explicit pair mean, AUC by counting pairs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from busmonai.cli import main
from busmonai.errors import BusmonaiInputError
from busmonai.data.phantom import simulate_case

N_IMAGES = 8
NOISE_LEVELS = (8.0, 24.0, 64.0)
"""Standard deviations of the added Gaussian noise, in grey levels."""


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _phantoms(n: int, size: int = 64, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, str]]:
    out = []
    for k in range(n):
        label = ("benign", "malignant")[k % 2]
        image, mask = simulate_case(label, np.random.default_rng(seed + k), size, size)
        out.append((image, mask, label))
    return out


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``real/`` (12 phantom images, 64 px) and ``noise_<k>/`` copies with Gaussian noise."""
    root = tmp_path_factory.mktemp("fid")
    rng = np.random.default_rng(1)
    cases = _phantoms(N_IMAGES)
    folders = {"real": root / "real"}
    for k, sigma in enumerate(NOISE_LEVELS):
        folders[f"noise_{k}"] = root / f"noise_{k}"
    for i, (image, _, label) in enumerate(cases):
        _save(image, folders["real"] / f"{label}_{i:04d}.png")
        for k, sigma in enumerate(NOISE_LEVELS):
            noisy = np.clip(image + rng.normal(0.0, sigma, image.shape), 0, 255).round()
            _save(noisy, folders[f"noise_{k}"] / f"{label}_{i:04d}.png")
    return folders


@pytest.fixture(scope="module")
def features(image_sets: dict[str, Path]) -> dict[str, np.ndarray]:
    """Inception features of every set at ``--size 64`` (written to the per-folder cache)."""
    from busmonai.metrics.inception import cached_features
    from busmonai.metrics.sources import image_source

    return {name: cached_features(image_source(folder), size=64).features for name, folder in image_sets.items()}


def reference_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID without ``sqrtm``: ``tr (S1 S2)^(1/2)`` is the nuclear norm of ``X1 X2^T / sqrt((n1-1)(n2-1))``."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    x1, x2 = f1 - f1.mean(0), f2 - f2.mean(0)
    n1, n2 = len(f1), len(f2)
    cross = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    mean_term = np.sum((f1.mean(0) - f2.mean(0)) ** 2)
    return float(mean_term + (x1**2).sum() / (n1 - 1) + (x2**2).sum() / (n2 - 1) - 2 * cross)


def reference_kid_whole_sets(f1: np.ndarray, f2: np.ndarray) -> float:
    """Unbiased MMD^2 with ``(x.y/d + 1)^3`` over two equal-sized sets, by explicit pair means."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    d, m = f1.shape[1], len(f1)

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b / d + 1.0) ** 3)

    xx = np.mean([k(f1[i], f1[j]) for i in range(m) for j in range(m) if i != j])
    yy = np.mean([k(f2[i], f2[j]) for i in range(m) for j in range(m) if i != j])
    xy = np.mean([k(f1[i], f2[j]) for i in range(m) for j in range(m)])
    return xx + yy - 2 * xy


# ---------------------------------------------------------------------------------------------
# Inception network and pre-processing


def test_inception_network_contract() -> None:
    from busmonai.metrics.inception import FEATURE_DIM, INCEPTION_SIZE, inception_path, to_inception_input

    assert inception_path().name == "default_1.pt" and inception_path().stat().st_size > 80e6
    x = to_inception_input(torch.tensor([[[0.0, 255.0], [128.0, 64.0]]]))
    assert x.shape == (1, 3, INCEPTION_SIZE, INCEPTION_SIZE)
    assert x.min() >= -1.0 and x.max() <= 127 / 128 + 1e-6
    assert torch.equal(x[:, 0], x[:, 2])  # grey -> three identical channels
    assert FEATURE_DIM == 2048


def test_feature_cache(image_sets: dict[str, Path], features: dict[str, np.ndarray]) -> None:
    from busmonai.metrics.inception import _cache_candidates, cached_features
    from busmonai.metrics.sources import image_source

    from busmonai.metrics.inception import user_cache_dir

    again = cached_features(image_source(image_sets["real"]), size=64)
    assert again.from_cache and again.cache is not None and again.cache.parent == user_cache_dir()
    assert not list(image_sets["real"].glob(".busmonai_inception_*"))  # nothing written into the input
    np.testing.assert_array_equal(again.features, features["real"])
    assert features["real"].shape == (N_IMAGES, 2048) and np.isfinite(features["real"]).all()
    # the cache file is not taken as an image; another size, or a touched file, is another entry
    source = image_source(image_sets["real"])
    assert len(source.paths) == N_IMAGES
    assert _cache_candidates(source, 32)[0] != again.cache
    first = source.paths[0]
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert _cache_candidates(source, 64)[0] != again.cache
    finally:
        os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _cache_candidates(source, 64)[0] == again.cache


def test_feature_cache_lives_in_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache goes to $BUSMONAI_CACHE_DIR/inception, never into the image folder; a cache an
    earlier version wrote beside the images is still read."""
    from busmonai.metrics import inception
    from busmonai.metrics.sources import image_source

    folder = tmp_path / "images"
    for i in range(3):
        _save(np.full((8, 8), 10 * i), folder / f"img_{i}.png")
    monkeypatch.setenv("BUSMONAI_CACHE_DIR", str(tmp_path / "user"))
    monkeypatch.setattr(inception, "inception_features", lambda images, **_: np.ones((len(images), 2048), np.float32))
    source = image_source(folder)
    before = sorted(folder.iterdir())
    first = inception.cached_features(source)
    assert not first.from_cache and first.cache is not None and first.cache.parent == tmp_path / "user" / "inception"
    assert sorted(folder.iterdir()) == before
    again = inception.cached_features(source)
    assert again.from_cache and again.cache == first.cache
    legacy = inception._cache_candidates(source, None)[1]
    first.cache.rename(legacy)  # as an earlier version left it
    old = inception.cached_features(source)
    assert old.from_cache and old.cache == legacy


# ---------------------------------------------------------------------------------------------
# FID and KID


def test_fid_and_kid_of_a_set_with_itself_are_zero(features: dict[str, np.ndarray]) -> None:
    from busmonai.metrics.fid import fid_from_features, kid_from_features

    f = features["real"]
    far = fid_from_features(f, features["noise_2"])
    assert abs(fid_from_features(f, f)) < 1e-6 * far
    kid_self, kid_std = kid_from_features(f, f, subsets=10)
    kid_far, _ = kid_from_features(f, features["noise_2"], subsets=10)
    assert kid_std < 1e-12  # subsets of the whole (equal-sized) sets: no spread
    # the same samples on both sides: (2/m)(mean off-diagonal k - mean diagonal k), O(1/m) -> 0
    k = (f.astype(np.float64) @ f.T.astype(np.float64) / f.shape[1] + 1.0) ** 3
    m = len(f)
    expected = 2.0 / m * ((k.sum() - np.trace(k)) / (m * (m - 1)) - np.trace(k) / m)
    assert kid_self == pytest.approx(expected, rel=1e-9) and expected <= 0
    assert abs(kid_self) < kid_far


def test_fid_and_kid_grow_with_noise(features: dict[str, np.ndarray]) -> None:
    from busmonai.metrics.fid import fid_from_features, kid_from_features

    fids = [fid_from_features(features["real"], features[f"noise_{k}"]) for k in range(len(NOISE_LEVELS))]
    kids = [kid_from_features(features["real"], features[f"noise_{k}"])[0] for k in range(len(NOISE_LEVELS))]
    assert 0 < fids[0] < fids[1] < fids[2], fids
    assert kids[0] < kids[1] < kids[2], kids


def test_fid_and_kid_match_direct_references(features: dict[str, np.ndarray]) -> None:
    from busmonai.metrics.fid import fid_from_features, frechet_distance, kid_from_features

    f1, f2 = features["real"], features["noise_1"]
    assert fid_from_features(f1, f2) == pytest.approx(reference_fid(f1, f2), rel=1e-6)
    kid, _ = kid_from_features(f1, f2, subsets=3, subset_size=N_IMAGES)
    assert kid == pytest.approx(reference_kid_whole_sets(f1, f2), rel=1e-9)
    # the full-dimension path (n1 + n2 > d) against scipy's sqrtm written out directly
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(0.3, 1.2, size=(150, 16)) @ rng.normal(size=(16, 16))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    direct = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert fid_from_features(a, b) == pytest.approx(direct, rel=1e-9)
    assert frechet_distance(a.mean(0), s1, b.mean(0), s2) == pytest.approx(direct, rel=1e-9)
    # the low-rank path (n1 + n2 <= d) on the same kind of data
    c, e = rng.normal(size=(10, 64)), rng.normal(0.5, 2.0, size=(12, 64))
    assert fid_from_features(c, e) == pytest.approx(reference_fid(c, e), rel=1e-6)


def test_evaluate_fid_cli_writes_json(image_sets: dict[str, Path], features: dict[str, np.ndarray], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from busmonai.metrics.fid import fid_from_features

    out = tmp_path / "fid.json"
    code = main(["evaluate", "fid", str(image_sets["real"]), str(image_sets["noise_1"]), "--size", "64",
                 "--json", str(out), "--kid-subsets", "20"])
    assert code == 0
    result = json.loads(out.read_text())
    assert {"fid", "kid", "kid_std", "n_real", "n_fake"} <= set(result)
    assert result["n_real"] == result["n_fake"] == N_IMAGES
    assert result["fid"] == pytest.approx(fid_from_features(features["real"], features["noise_1"]), rel=1e-9)
    printed = capsys.readouterr().out
    assert "FID" in printed and "KID" in printed


def test_datalist_source_selects_split_and_tumor_classes(tmp_path: Path) -> None:
    from busmonai.metrics.sources import image_source

    for name in ("benign_1.png", "malignant_1.png", "normal_1.png", "benign_2.png"):
        _save(np.zeros((8, 8)), tmp_path / "images" / name)
    _save(np.zeros((8, 8)), tmp_path / "masks" / "benign_1.png")
    _save(np.zeros((8, 8)), tmp_path / "sheet.png")
    datalist = {
        "training": [{"image": "images/benign_1.png", "class": "benign"},
                     {"image": "images/normal_1.png", "class": "normal"},
                     {"image": "images/malignant_1.png", "label": 1}],
        "validation": [],
        "test": [{"image": "images/benign_2.png", "class": "benign"}],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    every = image_source(tmp_path / "datalist.json")
    assert [p.name for p in every.paths] == ["benign_1.png", "malignant_1.png", "benign_2.png"]
    assert [p.name for p in image_source(tmp_path / "datalist.json", split="test").paths] == ["benign_2.png"]
    # --split picks the real images; a synthetic datalist (training only) is used whole
    from busmonai.metrics.sources import source_split

    synthetic = {"synthetic": True, "training": datalist["training"], "validation": [], "test": []}
    (tmp_path / "synthetic.json").write_text(json.dumps(synthetic))
    assert source_split(tmp_path / "datalist.json", "test") == "test"
    assert source_split(tmp_path / "synthetic.json", "test") is None and source_split(tmp_path, "test") is None
    # a folder: recursive, without masks/ and contact sheets
    assert sorted(p.name for p in image_source(tmp_path).paths) == [
        "benign_1.png", "benign_2.png", "malignant_1.png", "normal_1.png"]


def test_fid_bad_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one, mixed, broken, good = (tmp_path / n for n in ("one", "mixed", "broken", "good"))
    _save(np.zeros((16, 16)), one / "a.png")
    _save(np.zeros((16, 16)), mixed / "a.png")
    _save(np.zeros((16, 24)), mixed / "b.png")
    _save(np.zeros((16, 16)), broken / "a.png")
    (broken / "b.png").write_bytes(b"not a png")
    _save(np.zeros((16, 16)), good / "a.png")
    _save(np.full((16, 16), 9), good / "b.png")

    assert main(["evaluate", "fid", str(one), str(good)]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["evaluate", "fid", str(good), str(mixed)]) == 2
    err = capsys.readouterr().err
    assert "mixed sizes" in err and "b.png" in err and "--size" in err
    assert main(["evaluate", "fid", str(good), str(broken), "--size", "16"]) == 2
    assert "b.png" in capsys.readouterr().err
    assert main(["evaluate", "fid", str(good), str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Mask adherence


def _lesion_images(n: int = 4, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Bright images with a dark elliptic lesion exactly where the mask is."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.stack([((xx - 10 - 3 * k) / (5 + k)) ** 2 + ((yy - 15) / 4) ** 2 <= 1 for k in range(n)])
    images = np.where(masks, 40, 200).astype(np.uint8)
    return images, masks


def test_adherence_perfect_and_empty_segmenters() -> None:
    from busmonai.metrics.adherence import dice, mask_adherence

    images, masks = _lesion_images()
    perfect = mask_adherence(images, masks, segmenter=lambda x: (x < 0.5).float())
    assert perfect["mean"] == 1.0 and perfect["dice"] == [1.0] * len(images) and perfect["method"] == "segmenter"
    empty = mask_adherence(images, masks, segmenter=lambda x: torch.zeros_like(x))
    assert empty["mean"] == 0.0
    assert dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    half = np.zeros((4, 4), bool)
    half[:2] = True
    assert dice(half, np.ones((4, 4), bool)) == pytest.approx(2 * 8 / (8 + 16))


def test_fallback_segmenter_on_phantoms() -> None:
    from busmonai.metrics.adherence import dice, fallback_segment, mask_adherence

    cases = _phantoms(8, seed=10)
    result = mask_adherence(np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases]))
    assert result["mean"] > 0.5 and result["method"].startswith("fallback")
    # another case's mask fits worse than the image's own
    shuffled = [dice(cases[(i + 3) % 8][1] > 0, fallback_segment(cases[i][0], cases[(i + 3) % 8][1] > 0))
                for i in range(8)]
    assert np.mean(shuffled) < result["mean"]


def _synthetic_datalist(root: Path, n: int = 6) -> Path:
    items = []
    for i, (image, mask, label) in enumerate(_phantoms(n, seed=20)):
        _save(image, root / "images" / f"{label}_{i:04d}.png")
        _save(mask, root / "masks" / f"{label}_{i:04d}.png")
        items.append({"image": f"images/{label}_{i:04d}.png", "mask": f"masks/{label}_{i:04d}.png",
                      "class": label, "label": int(label == "malignant")})
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": items, "validation": [], "test": []}))
    return path


def test_evaluate_adherence_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    datalist = _synthetic_datalist(tmp_path / "syn")
    out = tmp_path / "adherence.json"
    assert main(["evaluate", "adherence", str(datalist), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 6 and 0.5 < result["mean"] <= 1.0 and len(result["dice"]) == 6
    assert "fallback" in capsys.readouterr().out
    # a state-dict segmenter with its bundle config: a 1x1 conv that marks dark pixels
    config = tmp_path / "seg.json"
    config.write_text(json.dumps({"network_def": {"_target_": "torch.nn.Conv2d", "in_channels": 1,
                                                  "out_channels": 1, "kernel_size": 1}}))
    net = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(-50.0)
        net.bias.fill_(10.0)  # logit > 0 where the image is darker than 0.2
    torch.save({"model": net.state_dict()}, tmp_path / "seg.pt")
    assert main(["evaluate", "adherence", str(datalist), "--segmenter", str(tmp_path / "seg.pt"),
                 "--segmenter-config", str(config), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"].startswith("segmenter") and 0.0 <= result["mean"] <= 1.0


# ---------------------------------------------------------------------------------------------
# Label fidelity


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_auc_rank_formula_with_ties() -> None:
    from busmonai.errors import BusmonaiInputError
    from busmonai.metrics.fidelity import roc_auc

    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 5, 60) / 4.0  # many ties
    assert roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)
    with pytest.raises(BusmonaiInputError, match="both classes"):
        roc_auc([1, 1], [0.2, 0.3])


class _DarknessClassifier(torch.nn.Module):
    """Logit of malignancy from the mean intensity (a TorchScript-able stand-in)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0.5 - x.mean(dim=(1, 2, 3))).unsqueeze(1) * 10.0


def test_evaluate_fidelity_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from busmonai.metrics.fidelity import label_fidelity, roc_auc

    datalist = _synthetic_datalist(tmp_path / "syn")
    model = tmp_path / "classifier.ts"
    torch.jit.script(_DarknessClassifier()).save(str(model))
    out = tmp_path / "fidelity.json"
    assert main(["evaluate", "fidelity", str(datalist), "--classifier", str(model), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_benign"] == result["n_malignant"] == 3
    labels = [int("malignant" in Path(p).name) for p in result["images"]]
    assert result["auc"] == pytest.approx(roc_auc(labels, result["scores"]))
    assert "AUC" in capsys.readouterr().out
    images = np.stack([np.full((8, 8), v, np.uint8) for v in (200, 150, 100, 50)])
    assert label_fidelity(images, [0, 0, 1, 1], _DarknessClassifier())["auc"] == 1.0


def test_fidelity_missing_or_bad_classifier_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    datalist = _synthetic_datalist(tmp_path / "syn", n=2)
    missing = tmp_path / "runs" / "classifier.ts"
    assert main(["evaluate", "fidelity", str(datalist), "--classifier", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err
    bad = tmp_path / "bad.ts"
    bad.write_text("nothing")
    assert main(["evaluate", "fidelity", str(datalist), "--classifier", str(bad)]) == 2
    assert "bad.ts" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Curvature


def test_evaluate_curvature_cli(tmp_path: Path) -> None:
    from busmonai.clinical.curvature import curvature_statistics

    yy, xx = np.mgrid[:64, :64]
    discs = [(xx - 32) ** 2 + (yy - 32) ** 2 <= r * r for r in (10, 14)]
    angle = np.arctan2(yy - 32, xx - 32)
    radius = np.hypot(yy - 32, xx - 32)
    lobed = [radius <= 14 * (1 + 0.25 * np.cos(k * angle)) for k in (5, 7)]
    masks = tmp_path / "masks"
    for i, m in enumerate(discs):
        _save(m * 255, masks / f"benign_{i:04d}.png")
    for i, m in enumerate(lobed):
        _save(m * 255, masks / f"malignant_{i:04d}.png")
    _save(np.zeros((64, 64)), masks / "normal_0001.png")  # skipped: no lesion
    _save(np.zeros((64, 64)), masks / "sheet.png")  # skipped: contact sheet
    out = tmp_path / "curv.json"
    assert main(["evaluate", "curvature", str(masks), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["all"]["n"] == 4 and result["benign"]["n"] == 2 and result["malignant"]["n"] == 2
    assert result["benign"]["mean"] == pytest.approx(curvature_statistics(discs)["mean"])
    assert result["malignant"]["mean"] > result["benign"]["mean"]
    _save(np.zeros((64, 64)), masks / "benign_0009.png")
    assert main(["evaluate", "curvature", str(masks)]) == 2


def test_evaluate_curvature_of_a_datalist(tmp_path: Path) -> None:
    datalist = _synthetic_datalist(tmp_path / "syn", n=4)
    out = tmp_path / "curv.json"
    assert main(["evaluate", "curvature", str(datalist), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benign"]["n"] == 2 and result["malignant"]["n"] == 2 and os.path.getsize(out) > 0


def test_mask_control_effect_separates_following_from_ignoring_the_mask() -> None:
    from busmonai.metrics.adherence import mask_control_effect

    masks = np.zeros((4, 16, 16), bool)
    for k in range(4):
        masks[k, 2 + 3 * k: 6 + 3 * k, 3:9] = True
    segmenter = lambda batch: (batch < 0.5).float()  # noqa: E731 - dark pixels are lesion
    following = np.where(masks, 0.1, 0.9)  # each image shows its own lesion
    ignoring = np.repeat(np.where(masks[:1], 0.1, 0.9), 4, axis=0)  # one lesion, whatever the mask
    good = mask_control_effect(following, masks, segmenter)
    bad = mask_control_effect(ignoring, masks, segmenter)
    assert good["own"] == 1.0 and good["shuffled"] < 0.5 and good["effect"] > 0.5
    assert bad["effect"] < 0.1
    with pytest.raises(BusmonaiInputError, match="shuffled-mask control"):
        mask_control_effect(following, masks, segmenter, shift=4)
