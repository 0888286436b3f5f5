"""Lesions into real images: the tissue region, latent inpainting, and ``busmonai generate
--background`` keeping every pixel outside the dilated lesion region equal to the real image."""

from __future__ import annotations

from collections import Counter

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from busmonai.cli import main
from busmonai.clinical.placement import TissueRegion
from busmonai.errors import BusmonaiInputError


def _disc(size: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8) * 255


def test_the_tissue_region_spans_the_real_lesions_and_placement_keeps_the_shape() -> None:
    real = [_disc(64, 20, 30, 4), _disc(64, 40, 12, 5), _disc(64, 30, 50, 3)]
    region = TissueRegion.fit(real)
    assert (region.y0, region.x0) <= (17, 8) and (region.y1, region.x1) >= (44, 53)
    new = _disc(64, 5, 5, 3)  # in the skin corner: outside the region
    assert not region.contains(new)
    rng = np.random.default_rng(0)
    for _ in range(20):
        placed = region.place(new, rng)
        assert region.contains(placed) and placed.sum() == new.sum()
    with pytest.raises(BusmonaiInputError, match="does not fit inside the tissue region"):
        region.place(_disc(64, 32, 32, 30), rng)
    with pytest.raises(BusmonaiInputError, match="no lesion mask"):
        TissueRegion.fit([np.zeros((64, 64), np.uint8)])
    assert region.fits(new) and not region.fits(_disc(64, 32, 32, 30))


def test_real_masks_too_large_for_the_tissue_region_are_not_drawn(tmp_path: Path) -> None:
    """The tissue region's edges are percentiles of the real lesions, so the largest real lesions do
    not fit in it: ``--mask-source real --background`` draws from the others, and says so when none fits."""
    from busmonai.synthesis.generate import real_mask_pool

    (tmp_path / "masks").mkdir()
    items = []
    for k, (cls, r) in enumerate([("benign", 4), ("benign", 30), ("benign", 5), ("malignant", 29)]):
        Image.fromarray(_disc(64, 32, 32, r)).save(tmp_path / "masks" / f"m{k}.png")
        items.append({"class": cls, "mask": f"masks/m{k}.png"})
    region = TissueRegion(10, 50, 10, 54, 64)
    assert [i["mask"] for i in real_mask_pool(tmp_path, items, "benign", 64, region)] == ["masks/m0.png", "masks/m2.png"]
    assert len(real_mask_pool(tmp_path, items, "benign", 64)) == 3  # without backgrounds: every mask
    with pytest.raises(BusmonaiInputError, match="no malignant training mask fits inside the backgrounds' tissue region"):
        real_mask_pool(tmp_path, items, "malignant", 64, region)


class _Zero(torch.nn.Module):
    """A denoiser that predicts no noise (so only the inpainting changes the latents)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(x)


def test_latent_inpainting_keeps_the_known_latents_outside_the_region() -> None:
    from busmonai.synthesis.sampling import LatentInpainting, ddim_sample, make_ddim

    known, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    region = torch.zeros(2, 1, 4, 4)
    region[:, :, 1:3, 1:3] = 1
    out = ddim_sample(_Zero(), make_ddim(steps=3), torch.randn(2, 3, 4, 4), None, guidance=1.0,
                      inpaint=LatentInpainting(known, region, noise))
    assert torch.equal(out[:, :, 0], known[:, :, 0]) and not torch.allclose(out[:, :, 1:3, 1:3], known[:, :, 1:3, 1:3])


def _checkpoints(autoencoder: Path, ldm: Path) -> list[str]:
    from bundle_runner import TINY_AUTOENCODER, TINY_UNET

    args = ["--autoencoder-ckpt", str(autoencoder / "model.pt"), "--ldm-ckpt", str(ldm / "model.pt"),
            "--image-size", "32", "--steps", "2", "--mode", "text"]
    for key, value in {**TINY_AUTOENCODER, **TINY_UNET}.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


@pytest.mark.parametrize("blend", ["latent", "pixel"])
def test_generate_into_normal_images_keeps_the_real_pixels(blend: str, trained_autoencoder: Path, trained_ldm: Path,
                                                           datalist32: Path, tmp_path: Path) -> None:
    from busmonai.synthesis.generate import blend_regions

    out = tmp_path / "bg"
    assert main(["generate", "--out", str(out), "--n", "4", "--datalist", str(datalist32), "--background",
                 str(datalist32), "--blend-margin", "2", "--blend", blend,
                 *_checkpoints(trained_autoencoder, trained_ldm)]) == 0
    data = json.loads((out / "datalist.json").read_text())
    entries = data["training"]
    assert len(entries) == 4 and data["settings"]["background"] == str(datalist32.resolve())
    real = json.loads(datalist32.read_text())["training"]
    normals = {str((datalist32.parent / i["image"]).resolve()) for i in real if i["class"] == "normal"}
    masks = [np.asarray(Image.open(out / e["mask"])) for e in entries]
    region = TissueRegion.fit([np.asarray(Image.open(datalist32.parent / i["mask"])) for i in real
                               if i["class"] in ("benign", "malignant")])
    for entry, mask, keep_out in zip(entries, masks, ~blend_regions(entries, masks, 2)):
        assert entry["background"] in normals and region.contains(mask)
        synthetic = np.asarray(Image.open(out / entry["image"]))
        background = np.asarray(Image.open(entry["background"]))
        assert np.array_equal(synthetic[keep_out], background[keep_out])  # outside: the real image, exactly
        assert not np.array_equal(synthetic, background)  # inside: new content
    assert (out / "sheet.png").is_file()


def test_background_bad_inputs(trained_autoencoder: Path, trained_ldm: Path, datalist32: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(datalist32.read_text())
    data["training"] = [i for i in data["training"] if i["class"] != "normal"]
    no_normals = datalist32.parent / "no_normals.json"
    no_normals.write_text(json.dumps(data))
    args = _checkpoints(trained_autoencoder, trained_ldm)
    assert main(["generate", "--out", str(tmp_path / "a"), "--n", "2", "--background", str(no_normals), *args]) == 2
    assert "no normal training images to use as backgrounds" in capsys.readouterr().err
    assert main(["generate", "--out", str(tmp_path / "b"), "--n", "2", "--background", str(no_normals),
                 "--background-classes", "tumor", *args]) == 0  # tumor images whose lesion is replaced
    entry = json.loads((tmp_path / "b" / "datalist.json").read_text())["training"][0]
    assert entry["background_mask"].endswith(".png")


def test_a_plan_cannot_send_files_outside_the_output(tmp_path: Path) -> None:
    from busmonai.synthesis.generate import output_path

    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    assert output_path(out, "images/a.png") == out / "images" / "a.png"
    for bad in ("/etc/passwd", "../escape.png", "images/../../x.png", None, 3):
        with pytest.raises(BusmonaiInputError, match="leaves the output folder"):
            output_path(out, bad)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "masks").symlink_to(elsewhere)
    with pytest.raises(BusmonaiInputError, match="linked folder"):
        output_path(out, "masks/a.png")


# --- filtering ---------------------------------------------------------------------------------

def test_the_filter_keeps_exactly_the_images_above_its_thresholds() -> None:
    from busmonai.synthesis.filtering import SyntheticFilter

    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    lesion = torch.zeros(3, 1, 8, 8)
    lesion[0, 0, 2:6, 2:6] = 1.0  # exactly the mask: Dice 1
    lesion[1, 0, 2:6, 2:4] = 1.0  # half of it: Dice 2/3
    seg = lambda images: lesion  # noqa: E731
    cls = lambda images: torch.tensor([0.9, 0.9, 0.05])  # noqa: E731  P(malignant)
    rows = SyntheticFilter(seg, cls, min_dice=0.6, min_class_prob=0.2).score(torch.zeros(3, 1, 8, 8), [mask] * 3,
                                                                           [1, 0, 1])
    assert [r["dice"] for r in rows] == [1.0, 0.6667, 0.0]
    assert [r["class_prob"] for r in rows] == [0.9, pytest.approx(0.1), 0.05]
    assert [r["kept"] for r in rows] == [True, False, False]  # dice ok but class contradicted; dice too low
    with pytest.raises(BusmonaiInputError, match="--filter-min-dice 1.5"):
        SyntheticFilter(seg, min_dice=1.5)


def test_generation_with_a_filter_refills_to_the_count(trained_autoencoder: Path, trained_ldm: Path,
                                                       datalist32: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from busmonai.synthesis import filtering
    from busmonai.synthesis.generate import FILTER_NAME, generate_dataset

    calls = {"n": 0}

    def every_other(self: filtering.SyntheticFilter, images: torch.Tensor, masks: list, labels: list) -> list:
        rows = []
        for _ in range(len(images)):
            rows.append({"dice": 1.0, "class_prob": None, "kept": calls["n"] % 2 == 0})
            calls["n"] += 1
        return rows

    monkeypatch.setattr(filtering.SyntheticFilter, "score", every_other)
    synthetic_filter = filtering.SyntheticFilter(lambda x: x, pool=4.0, digests={"segmenter": "abc"})
    from bundle_runner import TINY_AUTOENCODER, TINY_UNET
    from busmonai.bundles import bundle_config, run_config

    workflow = run_config([bundle_config("controlnet", "inference.json")], run=False, n=4, mode="text", steps=2,
                          image_size=32, batch_size=2, datalist=str(datalist32), output_dir="unused",
                          autoencoder_ckpt=str(trained_autoencoder / "model.pt"), ldm_ckpt=str(trained_ldm / "model.pt"),
                          **TINY_AUTOENCODER, **TINY_UNET)
    settings, models = workflow.parser.get_parsed_content("settings"), workflow.parser.get_parsed_content("models")
    settings.filter = synthetic_filter.settings()
    datalist = generate_dataset(tmp_path / "f", settings, models, progress=False, sheet=False,
                                synthetic_filter=synthetic_filter)
    scores = json.loads((tmp_path / "f" / FILTER_NAME).read_text())
    kept = datalist["training"]
    assert len(kept) == 4 and datalist["counts"]["training"] == {"benign": 2, "malignant": 2}
    assert all(scores[e["image"]]["kept"] for e in kept)
    assert datalist["filter"]["kept"] == 4 and datalist["filter"]["rejected"] == sum(not s["kept"] for s in scores.values())
    assert datalist["filter"]["checkpoints"] == {"segmenter": "abc"} and len(scores) < 16  # stopped when full
    # a class that is full draws no more candidates: benign passes at once, malignant every third time
    seen = {"malignant": 0}

    def benign_first(self: filtering.SyntheticFilter, images: torch.Tensor, masks: list, labels: list) -> list:
        rows = []
        for label in labels:
            seen["malignant"] += int(label == 1)
            rows.append({"dice": 1.0, "class_prob": None, "kept": label == 0 or seen["malignant"] % 3 == 0})
        return rows

    monkeypatch.setattr(filtering.SyntheticFilter, "score", benign_first)
    datalist = generate_dataset(tmp_path / "h", settings, models, progress=False, sheet=False,
                                synthetic_filter=synthetic_filter)
    plan = {e["image"]: e["class"] for e in json.loads((tmp_path / "h" / "plan.json").read_text())["entries"]}
    scored = Counter(plan[name] for name in json.loads((tmp_path / "h" / FILTER_NAME).read_text()))
    assert datalist["counts"]["training"] == {"benign": 2, "malignant": 2}
    # no benign candidate after the batch that met the benign count (the old loop went on drawing both
    # classes until malignant was full: about 7 benign candidates here)
    assert scored["benign"] <= 2 + settings.batch_size - 1 and scored["malignant"] <= 6 + settings.batch_size - 1, scored
    assert len(list((tmp_path / "h" / "images").glob("benign_*.png"))) == scored["benign"]
    monkeypatch.setattr(filtering.SyntheticFilter, "score",
                        lambda self, images, masks, labels: [{"dice": 0.0, "class_prob": None, "kept": False}] * len(images))
    with pytest.raises(BusmonaiInputError, match="the filter kept 0 of 4 images after 16 candidates"):
        generate_dataset(tmp_path / "g", settings, models, progress=False, sheet=False, synthetic_filter=synthetic_filter)


def test_a_filter_classifier_needs_a_segmenter(trained_autoencoder: Path, trained_ldm: Path, datalist32: Path,
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _checkpoints(trained_autoencoder, trained_ldm)
    assert main(["generate", "--out", str(tmp_path / "a"), "--n", "2", "--filter-classifier",
                 str(tmp_path / "cls.pt"), *args]) == 2
    assert "needs --filter SEGMENTER_MODEL_PT" in capsys.readouterr().err
    assert main(["generate", "--out", str(tmp_path / "b"), "--n", "2", "--filter", str(tmp_path / "seg.pt"), *args]) == 2
    assert "filter_segmenter_ckpt" in capsys.readouterr().err


def test_latent_blending_and_pixel_paste_share_the_plan_and_differ(trained_autoencoder: Path, trained_ldm: Path,
                                                                        datalist32: Path, tmp_path: Path) -> None:
    """The same plan with --blend latent and --blend pixel: the same masks and backgrounds, other
    images (the latent run denoises the region in the real tissue's context); that both keep the real
    pixels outside is checked above."""
    outs = {}
    for blend in ("latent", "pixel"):
        outs[blend] = tmp_path / blend
        assert main(["generate", "--out", str(outs[blend]), "--n", "4", "--datalist", str(datalist32), "--background",
                     str(datalist32), "--blend", blend, *_checkpoints(trained_autoencoder, trained_ldm)]) == 0
    latent, pixel = (json.loads((outs[b] / "datalist.json").read_text())["training"] for b in ("latent", "pixel"))
    assert [(e["background"], e["bbox"]) for e in latent] == [(e["background"], e["bbox"]) for e in pixel]
    assert any(not np.array_equal(np.asarray(Image.open(outs["latent"] / a["image"])),
                                  np.asarray(Image.open(outs["pixel"] / b["image"]))) for a, b in zip(latent, pixel))


def test_seam_ratio_on_known_images() -> None:
    from busmonai.errors import BusmonaiInputError
    from busmonai.metrics.seams import boundary_ring, seam_ratio

    rng = np.random.default_rng(0)
    background = rng.normal(100, 10, (32, 32))
    region = _disc(32, 16, 16, 6) > 0
    assert seam_ratio(background, background, region) == pytest.approx(1.0)  # nothing pasted: seamless
    pasted = background.copy()
    pasted[region] = 200.0  # a flat bright patch: a hard edge on the ring
    assert seam_ratio(pasted, background, region) > 3.0
    ring = boundary_ring(region)
    assert ring.sum() > 0 and not (ring & ~region).any() and ring.sum() < region.sum()
    with pytest.raises(BusmonaiInputError, match="no boundary"):
        seam_ratio(background, background, np.zeros((32, 32), bool))
    with pytest.raises(BusmonaiInputError, match="shapes differ"):
        seam_ratio(background, background[:16], region)


def test_the_seam_comparison_runs_both_blends_on_one_plan(trained_autoencoder: Path, trained_ldm: Path,
                                                          datalist32: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from busmonai.experiments.seam_comparison import main as seams

    out = tmp_path / "seams"
    assert seams(["--autoencoder-ckpt", str(trained_autoencoder / "model.pt"), "--ldm-ckpt",
                  str(trained_ldm / "model.pt"), "--datalist", str(datalist32), "--n", "4", "--steps", "2",
                  "--image-size", "32", "--mode", "text", "--out", str(out)]) == 0
    report = json.loads((out / "seams.json").read_text())
    assert set(report["methods"]) == {"latent", "pixel"}
    assert all(row["seam_ratio"]["n"] == 4 and row["seam_ratio"]["mean"] > 0 for row in report["methods"].values())
    assert (out / "seams.png").is_file() and "seam ratio" in capsys.readouterr().out
