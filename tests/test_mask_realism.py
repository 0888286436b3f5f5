"""Mask realism (``busmonai.metrics.mask_realism``, ``busmonai evaluate masks``) and the SCMG recipe switches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from busmonai.cli import main
from busmonai.clinical.bbox import bboxes_to_maps, mask_bbox
from busmonai.clinical.ellipse import generate_ellipse_masks
from busmonai.engines.scmg import SCMGMaskDataset, SCMGTrainer, mask_items
from busmonai.errors import BusmonaiInputError
from busmonai.metrics.mask_realism import (
    centred_rect_iou,
    classifier_two_sample_test,
    compare_shape_statistics,
    generated_diversity,
    mean_pairwise_iou,
    pair_with_real,
    real_diversity,
    shape_statistics,
)
from busmonai.networks.scmg import SCMGDiscriminator, SCMGGenerator, soften_rectangle_maps

SIZE = 64


def _real_like(n_per_class: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Elastic-ellipse masks (the CP prior) of both classes: a stand-in for real lesions."""
    benign = generate_ellipse_masks("benign", n_per_class, SIZE, seed=seed)
    malignant = generate_ellipse_masks("malignant", n_per_class, SIZE, seed=seed + 1)
    return np.stack(benign + malignant) > 0, ["benign"] * n_per_class + ["malignant"] * n_per_class


def _disc(radius: float = 20.0, size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2


def _star(size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    theta = np.arctan2(yy - size / 2, xx - size / 2)
    radius = 22.0 * (0.55 + 0.45 * np.cos(5 * theta))
    return np.hypot(yy - size / 2, xx - size / 2) <= radius


@pytest.fixture(scope="module")
def real_like() -> tuple[np.ndarray, list[str]]:
    return _real_like(150, seed=3)


def test_two_sample_auc_is_half_for_one_distribution(real_like: tuple[np.ndarray, list[str]]) -> None:
    masks, labels = real_like
    order = np.random.default_rng(0).permutation(len(masks))
    a, b = order[::2], order[1::2]
    result = classifier_two_sample_test(masks[a], masks[b], [labels[i] for i in a], [labels[i] for i in b], seed=0)
    assert abs(result["auc"] - 0.5) < 0.15, result
    assert result["n_test_real"] + result["n_train_real"] == result["n_test_generated"] + result["n_train_generated"]
    assert set(result["per_class"]) == {"benign", "malignant"}


def test_two_sample_auc_is_one_for_filled_rectangles(real_like: tuple[np.ndarray, list[str]]) -> None:
    masks, labels = real_like
    boxes = np.zeros_like(masks)
    for i, mask in enumerate(masks):
        x0, y0, x1, y1 = mask_bbox(mask)
        boxes[i, y0:y1, x0:x1] = True
    pairs = np.arange(len(masks))  # each rectangle beside the real mask it was drawn for
    result = classifier_two_sample_test(masks, boxes, labels, labels, pairs=pairs, seed=0)
    assert result["auc"] > 0.95, result
    assert result["paired"] and result["n_test_real"] == result["n_test_generated"]


def test_two_sample_test_is_deterministic_and_leaves_global_rng() -> None:
    masks, labels = _real_like(12, seed=5)
    other, _ = _real_like(12, seed=50)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = classifier_two_sample_test(masks, other, labels, labels, seed=7, epochs=3, frame="lesion")
    assert torch.equal(torch.rand(1), before)
    second = classifier_two_sample_test(masks, other, labels, labels, seed=7, epochs=3, frame="lesion")
    assert first == second


def test_two_sample_test_refuses_too_few_masks() -> None:
    masks, labels = _real_like(1, seed=0)
    with pytest.raises(BusmonaiInputError, match="at least"):
        classifier_two_sample_test(masks, masks, labels, labels)


def test_shape_statistics_of_known_shapes() -> None:
    disc = shape_statistics(_disc())
    assert disc["solidity"] > 0.97 and disc["eccentricity"] < 0.1 and disc["roughness"] < 1.05
    assert disc["rect_fill"] == pytest.approx(np.pi / 4, abs=0.03)
    square = np.zeros((SIZE, SIZE), dtype=bool)
    square[10:40, 20:50] = True
    stats = shape_statistics(square)
    assert stats["rect_fill"] == 1.0 and stats["solidity"] == pytest.approx(1.0) and stats["eccentricity"] < 1e-6
    star = shape_statistics(_star())
    assert star["solidity"] < 0.8 and star["roughness"] > 1.1 and star["curvature"] > disc["curvature"]
    with pytest.raises(BusmonaiInputError, match="empty"):
        shape_statistics(np.zeros((SIZE, SIZE), dtype=bool))


def test_wasserstein_is_zero_for_the_same_masks() -> None:
    masks, labels = _real_like(5, seed=1)
    result = compare_shape_statistics(masks, masks, labels, labels)
    assert set(result) == {"benign", "malignant"}
    assert all(entry["wasserstein"] == 0.0 for cls in result.values() for entry in cls.values())
    other = compare_shape_statistics(masks, np.stack([_star()] * 4), labels, ["benign"] * 4)
    assert set(other) == {"benign"} and other["benign"]["solidity"]["wasserstein"] > 0.1


def test_diversity_of_identical_masks_is_one() -> None:
    disc = _disc(12)
    assert mean_pairwise_iou([disc, disc, disc]) == 1.0
    rect = (20, 20, 44, 44)
    result = generated_diversity(np.stack([disc] * 3 + [_star()]), ["benign"] * 4, [rect] * 3 + [None])
    assert result == {"benign": {"iou": 1.0, "groups": 1, "masks": 3}}
    # the real reference aligns rectangle centres: one shape at two places reads 1.0
    moved = np.roll(disc, (10, -7), axis=(0, 1))
    masks = np.stack([disc, moved, _disc(4)])
    rects = [mask_bbox(m) for m in masks]
    assert centred_rect_iou(rects[0], rects[1]) == 1.0 and centred_rect_iou(rects[0], rects[2]) < 0.7
    assert real_diversity(masks, ["malignant"] * 3, rects) == {"malignant": {"iou": 1.0, "pairs": 1}}


def test_pairing_takes_the_same_class_and_rectangle() -> None:
    real_rects = [(0, 0, 10, 10), (5, 5, 20, 20), (5, 5, 20, 20)]
    idx, ious = pair_with_real(["malignant", "benign"], [(5, 5, 20, 20), (1, 1, 10, 10)],
                               ["benign", "benign", "malignant"], real_rects)
    assert idx.tolist() == [2, 0] and ious[0] == 1.0 and 0.5 < ious[1] < 1.0
    with pytest.raises(BusmonaiInputError, match="no real malignant"):
        pair_with_real(["malignant"], [(0, 0, 5, 5)], ["benign"], [(0, 0, 5, 5)])


# --------------------------------------------------------------------------------------------
# busmonai evaluate masks


@pytest.fixture(scope="module")
def prepared64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-image phantom prepared at 64 px (13 benign and 13 malignant training masks)."""
    from busmonai.data.phantom import write_phantom_dataset
    from busmonai.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("realism")
    write_phantom_dataset(root / "raw", n=40, seed=0, height=SIZE, width=SIZE, progress=False)
    prepare_dataset("busi", root / "raw", root / "prepared", size=SIZE, progress=False)
    return root / "prepared" / "datalist.json"


def _draw_for_training_rectangles(datalist: Path, out: Path, per_class: int = 2, seeds: int = 4) -> Path:
    """``busmonai masks --method ellipse --bbox`` for the first training rectangles of each class."""
    items = json.loads(datalist.read_text())["training"]
    for cls in ("benign", "malignant"):
        for k, item in enumerate([i for i in items if i["class"] == cls][:per_class]):
            box = ",".join(str(v) for v in item["bbox"])
            assert main(["masks", "--method", "ellipse", "--label", cls, "--n", str(seeds), "--size", str(SIZE),
                         "--bbox", box, "--out", str(out / f"{cls}_{k}")]) == 0
    return out


def test_evaluate_masks_table_sheet_and_json(prepared64: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    generated = _draw_for_training_rectangles(prepared64, tmp_path / "generated")
    capsys.readouterr()
    report = tmp_path / "report" / "realism.json"
    assert main(["evaluate", "masks", str(prepared64), str(generated), "--json", str(report)]) == 0
    table = capsys.readouterr().out
    for row in ("two-sample AUC, lesion", "two-sample AUC, image", "kappa benign", "class gap (M - B)",
                "W1 solidity", "W1 eccentricity", "W1 roughness", "W1 curvature", "W1 rect_fill", "rectangle IoU",
                "diversity (IoU)", "100 % exact"):
        assert row in table, row
    sheet = tmp_path / "generated_realism.png"
    assert sheet.is_file() and not list(generated.glob("*realism*"))
    rows, cols = 4, 8  # benign real / generated, malignant real / generated
    assert np.asarray(Image.open(sheet)).shape == (rows * SIZE + (rows - 1) * 2, cols * SIZE + (cols - 1) * 2)
    result = json.loads(report.read_text())
    assert result["pairing"]["exact"] == 1.0
    assert result["counts"]["generated"] == {"benign": 8, "malignant": 8}
    assert 0.0 <= result["two_sample"]["lesion"]["auc"] <= 1.0
    assert result["diversity"]["generated"]["benign"]["groups"] == 2


@pytest.mark.parametrize("case, message", [
    ("empty", "no generated masks"),
    ("size", "--size 64"),
    ("datalist", "real datalist not found"),
    ("sheet", "inside the generated masks folder"),
])
def test_evaluate_masks_bad_input(case: str, message: str, prepared64: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    generated = tmp_path / "generated"
    datalist, extra = prepared64, []
    if case == "empty":
        generated.mkdir()
    elif case == "size":
        assert main(["masks", "--label", "benign", "--n", "2", "--size", "32", "--out", str(generated)]) == 0
    else:
        assert main(["masks", "--label", "benign", "--n", "2", "--size", "64", "--out", str(generated)]) == 0
        if case == "datalist":
            datalist = tmp_path / "missing" / "datalist.json"
        else:
            extra = ["--sheet", str(generated / "sheet_realism.png")]
    capsys.readouterr()
    assert main(["evaluate", "masks", str(datalist), str(generated), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert (str(datalist) if case == "datalist" else str(generated)) in err


# --------------------------------------------------------------------------------------------
# SCMG recipe switches (defaults = the paper's recipe)


def test_soft_rectangle_prior() -> None:
    maps = bboxes_to_maps(torch.tensor([[10, 20, 40, 30]]), SIZE, SIZE)
    assert soften_rectangle_maps(maps, 0.0) is maps
    soft = soften_rectangle_maps(maps, 2.0)
    assert float(soft.max()) == pytest.approx(1.0) and float(soft.min()) >= 0.0
    assert 0.0 < float(soft[0, 0, 20, 8]) < 0.5 < float(soft[0, 0, 25, 25])
    kwargs = {"latent_dim": 8, "base_channels": 8, "image_size": SIZE, "type_embed_dim": 4, "spade_hidden": 8}
    hard, blurred = SCMGGenerator(**kwargs), SCMGGenerator(**kwargs, map_blur=0.05)
    blurred.load_state_dict({**hard.state_dict(), "map_blur": torch.tensor(0.05)})
    z, types = torch.randn(1, 8), torch.tensor([0])
    with torch.no_grad():
        assert not torch.allclose(hard(z, types, maps), blurred(z, types, maps))
    old = {k: v for k, v in hard.state_dict().items() if k != "map_blur"}  # a checkpoint from before the switch
    assert float(SCMGGenerator.from_state_dict(old).map_blur) == 0.0
    with pytest.raises(BusmonaiInputError, match="map_blur"):
        SCMGGenerator(**kwargs, map_blur=-1.0)


def test_branch_weights_scale_only_the_generator_gradient() -> None:
    torch.manual_seed(0)
    disc = SCMGDiscriminator(base_channels=8, image_size=SIZE)
    maps = bboxes_to_maps(torch.tensor([[10, 10, 50, 40]]), SIZE, SIZE)
    x = torch.rand(1, 1, SIZE, SIZE, requires_grad=True)
    adv, types = disc(x, maps)
    adv_w, types_w = disc(x, maps, branch_weights=(0.0, 0.0))
    assert torch.equal(adv, adv_w) and torch.equal(types, types_w)
    assert float(torch.autograd.grad(adv_w.sum(), x)[0].abs().sum()) == 0.0
    assert float(torch.autograd.grad(adv.sum(), x)[0].abs().sum()) > 0.0


def test_class_weighted_curvature_loss() -> None:
    kwargs = {"latent_dim": 8, "base_channels": 8, "image_size": SIZE, "type_embed_dim": 4, "spade_hidden": 8}
    generator = SCMGGenerator(**kwargs)
    generator.curvature_targets.copy_(torch.tensor([0.05, 0.1]))
    disc = SCMGDiscriminator(base_channels=8, image_size=SIZE)
    maps = bboxes_to_maps(torch.tensor([[10, 10, 50, 40], [20, 8, 40, 56]]), SIZE, SIZE)
    fake, types = 0.9 * maps, torch.tensor([0, 1])

    def cur_loss(**extra: object) -> float:
        trainer = SCMGTrainer("cpu", 1, [], generator, disc, torch.optim.Adam(generator.parameters()),
                              torch.optim.Adam(disc.parameters()), **extra)
        return float(trainer.generator_losses(fake, maps, types)["cur_loss"])

    base = cur_loss()
    assert cur_loss(cur_class_weights=[1.0, 1.0], d_branch_weights=[1.0, 1.0]) == base
    assert cur_loss(cur_class_weights=[2.0, 2.0]) == pytest.approx(2 * base)
    assert cur_loss(cur_class_weights=[1.0, 0.0]) < base
    with pytest.raises(BusmonaiInputError, match="d_branch_weights"):
        cur_loss(d_branch_weights=[1.0])


def test_augmentation_keeps_orientation_and_box(prepared64: Path) -> None:
    items = mask_items(prepared64, "training", SIZE)
    dataset = SCMGMaskDataset(items, SIZE, flip_prob=0.5, rotate_deg=20.0, scale=0.15)
    torch.manual_seed(0)
    changed = 0
    for _ in range(3):
        for i in range(len(dataset)):
            item = dataset[i]
            mask, box, original = item["mask"][0] > 0.5, item["bbox"], dataset.bboxes[i]
            assert list(mask_bbox(mask.numpy())) == [int(v) for v in box.tolist()]
            sign = torch.sign((box[2] - box[0]) - (box[3] - box[1]))
            assert sign == torch.sign((original[2] - original[0]) - (original[3] - original[1]))
            changed += int(mask.sum() != dataset.masks[i].sum())
    assert changed > len(dataset)  # most draws are kept
    default = SCMGMaskDataset(items, SIZE, flip_prob=0.0)
    assert all(torch.equal(default[i]["mask"], default.masks[i]) for i in range(len(default)))


def test_the_realism_experiment_has_an_elliptic_row_without_training(datalist32: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from busmonai.experiments.scmg_realism_experiment import main as experiment

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "realism"
    assert experiment(["--datalist", str(datalist32), "--variants", "ellipse", "--seeds", "2", "--rects", "2",
                       "--threads", "1", "--out", str(out)]) == 0
    text = (out / "table.json").read_text()
    assert str(tmp_path) not in text and '"out": "realism"' in text  # paths below the working folder: relative
    table = json.loads(text)
    assert [row["variant"] for row in table["rows"]] == ["ellipse"] and table["rows"][0]["iterations"] == 0
    assert not (out / "ellipse" / "run").exists() and (out / "ellipse" / "realism.png").is_file()
    assert experiment(["--datalist", str(datalist32), "--variants", "ellipse,nonsense", "--out", str(out)]) == 2
    assert "unknown ['nonsense']" in capsys.readouterr().err
