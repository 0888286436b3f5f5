"""Downstream bundles (classification, segmentation), real:synthetic mixing and the ratio sweep,
on 32 px phantom data with tiny networks."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bundle_runner import REPO, assert_both_ranks_stepped_rank0_wrote, is_input_error, run_bundle, run_torchrun
from busmonai.data.mixing import (
    class_counts,
    mix_datalists,
    parse_ratio,
    real_items,
    synthetic_counts,
    training_items,
)
from busmonai.errors import BusmonaiInputError

CLS = "bundles/classification/configs"
SEG = "bundles/segmentation/configs"
TINY_CLS = {"image_size": 32, "network_name": "test_efficientnet", "batch_size": 4, "val_batch_size": 4}
TINY_SEG = {"image_size": 32, "num_res_units": 1, "seg_channels": [4, 8, 8], "batch_size": 4,
            "val_batch_size": 4}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small networks on a shared 2-core CPU: oversubscribed OpenMP threads are 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _prepare(raw: Path, out: Path, size: int = 32) -> Path:
    from busmonai.data.prepare import prepare_dataset

    prepare_dataset("busi", raw, out, size=size, progress=False)
    return out / "datalist.json"


def _mark_synthetic(datalist: Path, out: Path, **changes: Any) -> Path:
    """A copy of ``datalist`` (next to its images) flagged synthetic, as the synthesis stage writes."""
    data = json.loads(datalist.read_text())
    data["synthetic"] = True
    for split in ("training", "validation", "test"):
        for item in data[split]:
            item["synthetic"] = True
            for cls, (new_cls, new_label) in changes.items():
                if item["class"] == cls:
                    item["class"], item["label"] = new_cls, new_label
    out.write_text(json.dumps(data))
    return out


@pytest.fixture(scope="module")
def data(phantom_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real 32 px datalist, a second phantom (another seed) as real external and as synthetic
    datalist, and the real one at 48 px."""
    from busmonai.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("downstream")
    raw2 = root / "raw2"
    write_phantom_dataset(raw2, n=12, seed=1, height=64, width=80, progress=False)
    real = _prepare(phantom_source, root / "real")
    other = _prepare(raw2, root / "other")
    return {
        "real": real,
        "external": other,
        "synthetic": _mark_synthetic(other, other.parent / "synthetic.json"),
        "relabelled": _mark_synthetic(other, other.parent / "relabelled.json", malignant=("cyst", 2)),
        "real48": _prepare(phantom_source, root / "real48", size=48),
    }


def _items(n_benign: int, n_malignant: int, prefix: str) -> list[dict[str, Any]]:
    return [{"image": f"{prefix}_{c}_{k}.png", "class": c, "label": int(c == "malignant")}
            for c, n in (("benign", n_benign), ("malignant", n_malignant)) for k in range(n)]


# --- mixing -------------------------------------------------------------------------------------

def test_parse_ratio_accepts_papers_notations() -> None:
    assert parse_ratio("1:2") == 2.0 and parse_ratio("1:1") == 1.0 and parse_ratio("2:1") == 0.5
    assert parse_ratio("25%") == 0.25 and parse_ratio(0.5) == 0.5 and parse_ratio("0") == 0.0
    for bad in ("-0.5", "a", "0:1", "1:x"):
        with pytest.raises(BusmonaiInputError):
            parse_ratio(bad)


@pytest.mark.parametrize("ratio", [0, 0.25, 0.5, 1, 2, "1:2"])
def test_ratio_yields_class_balanced_synthetic_counts(ratio: float | str) -> None:
    real, pool = _items(10, 5, "real"), _items(40, 40, "syn")
    mixed = mix_datalists(real, pool, ratio, seed=3)
    value = parse_ratio(ratio)
    synthetic = [i for i in mixed if i["synthetic"]]
    expected = {"benign": int(10 * value + 0.5), "malignant": int(5 * value + 0.5)}
    assert class_counts(synthetic) == {k: v for k, v in expected.items() if v}
    assert synthetic_counts(real, value, ("benign", "malignant")) == expected
    assert [i["image"] for i in mixed if not i["synthetic"]] == [i["image"] for i in real]
    assert len({i["image"] for i in synthetic}) == len(synthetic)  # without replacement
    assert mixed == mix_datalists(real, pool, ratio, seed=3)  # seeded
    if value:
        assert mixed != mix_datalists(real, pool, ratio, seed=4)


def test_smaller_ratio_draws_a_subset_of_a_larger_one() -> None:
    real, pool = _items(10, 5, "real"), _items(40, 40, "syn")
    half = {i["image"] for i in mix_datalists(real, pool, 0.5) if i["synthetic"]}
    double = {i["image"] for i in mix_datalists(real, pool, 2) if i["synthetic"]}
    assert half < double


def test_mixing_errors_are_clear() -> None:
    real = _items(10, 5, "real")
    with pytest.raises(BusmonaiInputError, match="no synthetic datalist"):
        mix_datalists(real, None, 0.5)
    with pytest.raises(BusmonaiInputError, match=">= 0"):
        mix_datalists(real, _items(4, 4, "s"), -1)
    with pytest.raises(BusmonaiInputError, match="20 synthetic benign images are needed .* has 4"):
        mix_datalists(real, _items(4, 40, "s"), 2)
    repeated = mix_datalists(real, _items(4, 40, "s"), 2, replace=True)
    assert class_counts([i for i in repeated if i["synthetic"]]) == {"benign": 20, "malignant": 10}
    extra = _items(4, 4, "s") + [{"image": "x.png", "class": "cyst", "label": 2}]
    with pytest.raises(BusmonaiInputError, match=r"classes \['cyst'\] do not occur"):
        mix_datalists(real, extra, 1, classes=("benign", "malignant", "cyst"))
    swapped = [dict(i, label=1 - i["label"]) for i in _items(20, 20, "s")]
    with pytest.raises(BusmonaiInputError, match="label"):
        mix_datalists(real, swapped, 1)


def test_training_items_from_datalists(data: dict[str, Path]) -> None:
    real = real_items(data["real"], "training", holdout=0.2)
    mixed = training_items(data["real"], data["synthetic"], "1:1", holdout=0.2)
    synthetic = [i for i in mixed if i["synthetic"]]
    assert class_counts(synthetic) == class_counts(real)
    assert all(Path(i["image"]).is_file() and "other" in i["image"] for i in synthetic)
    validation = real_items(data["real"], "validation", holdout=0.2)
    assert validation and not any(i["synthetic"] for i in validation)
    assert not {i["image"] for i in validation} & {i["image"] for i in mixed}
    with pytest.raises(BusmonaiInputError, match="synthetic datalist was given as the real"):
        real_items(data["synthetic"], "test")
    with pytest.raises(BusmonaiInputError, match="do not occur in the real"):
        training_items(data["real"], data["relabelled"], 1, holdout=0.2)
    with pytest.raises(BusmonaiInputError, match=r"synthetic.json: images are 32x32 px but the bundle's 'image_size' is 48"):
        training_items(data["real48"], data["synthetic"], 1, image_size=48)


# --- classification bundle ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("cls") / "classification"
    workflow = run_bundle([f"{CLS}/train.json"], datalist=str(data["real"]), synthetic_datalist=str(data["synthetic"]),
                          ratio="1:1", output_dir=str(out), max_epochs=2, **TINY_CLS)
    return out, workflow


def test_classifier_trains_on_mixed_data_and_validates_on_real(classifier_run: tuple[Path, Any]) -> None:
    out, workflow = classifier_run
    for name in ("model.pt", "metrics.json", "predictions.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["validation"]) == {"val_auc", "val_f1", "val_accuracy", "val_sensitivity", "val_specificity"}
    assert metrics["ratio"] == 1.0 and metrics["epochs"] == 2
    assert metrics["training_counts"]["synthetic"] == metrics["training_counts"]["real"]
    assert metrics["validation_counts"]["synthetic"] == {}
    parser = workflow.parser
    assert not any(item["synthetic"] for item in parser.get_parsed_content("validate#data"))
    assert any(item["synthetic"] for item in parser.get_parsed_content("train#data"))


def test_classifier_evaluate_reloads_best_checkpoint(classifier_run: tuple[Path, Any], data: dict[str, Path]) -> None:
    out, _ = classifier_run
    workflow = run_bundle([f"{CLS}/evaluate.json"], datalist=str(data["real"]), output_dir=str(out), **TINY_CLS)
    network = workflow.parser.get_parsed_content("network")
    saved = torch.load(out / "model.pt", weights_only=True)["model"]
    assert saved.keys() == network.state_dict().keys()
    assert all(torch.equal(saved[k], v.cpu()) for k, v in network.state_dict().items())
    result = json.loads((out / "test_metrics.json").read_text())
    test = result["test"]
    assert {"auc", "f1", "f1_tuned", "accuracy", "sensitivity", "specificity"} <= set(test)
    tumors = [i for i in json.loads(data["real"].read_text())["test"] if i["class"] in ("benign", "malignant")]
    assert test["n"] == len(tumors) and test["counts"] == class_counts(tumors)
    assert result["checkpoint"].endswith("model.pt")
    # F1 at the threshold that maximises it on the training run's own validation holdout, never on test
    validation = workflow.parser.get_parsed_content("validation_items")
    assert validation and not {i["image"] for i in validation} & {i["image"] for i in
                                                                 workflow.parser.get_parsed_content("sets")["test"]}
    assert result["f1_threshold"] == workflow.parser.get_parsed_content("tuned_threshold")
    assert result["f1_threshold_from"] == "validation" and 0.0 <= result["f1_threshold"] <= 1.0


class _FixedProbabilities(torch.nn.Module):
    """A "classifier" whose malignant probability for image k is ``probabilities[k]`` (read from the
    image's first pixel, which holds k)."""

    def __init__(self, probabilities: list[float]) -> None:
        super().__init__()
        self.p = torch.tensor(probabilities)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p[(x[:, 0, 0, 0] * 255).round().long()]
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


def test_f1_threshold_on_known_probabilities(tmp_path: Path) -> None:
    from busmonai.engines.downstream import f1_threshold

    probabilities = [0.1, 0.35, 0.4, 0.8, 0.3, 0.6]
    labels = [0, 1, 1, 1, 0, 0]
    items = []
    for k, label in enumerate(labels):
        image = np.zeros((8, 8), np.uint8)
        image[0, 0] = k
        Image.fromarray(image).save(tmp_path / f"{k}.png")
        items.append({"image": str(tmp_path / f"{k}.png"), "label": label, "class": ("benign", "malignant")[label]})
    # >= 0.35: tp 3, predicted 4 (0.35, 0.4, 0.8, 0.6), F1 6/7; >= 0.4: tp 2, predicted 3, F1 4/6; >= 0.3: 6/8
    assert f1_threshold(_FixedProbabilities(probabilities), items, ["image"]) == pytest.approx(0.35)
    with pytest.raises(BusmonaiInputError, match="no class 1"):
        f1_threshold(_FixedProbabilities(probabilities), [i for i in items if i["label"] == 0], ["image"])


def test_classifier_with_lt_genaug_adaptive_sampler(data: dict[str, Path], tmp_path: Path) -> None:
    """The override file swaps the fixed ratio for LT-GenAug's agents: batches are real items plus
    per-class synthetic counts the agents change after every validation; validation stays real and
    the agents' state is part of the resume checkpoint."""
    out = tmp_path / "adaptive"
    workflow = run_bundle([f"{CLS}/train.json", f"{CLS}/adaptive_sampler.json"], datalist=str(data["real"]),
                          synthetic_datalist=str(data["synthetic"]), output_dir=str(out), max_epochs=3,
                          adaptive_initial=2, **TINY_CLS)
    parser = workflow.parser
    sampler = parser.get_parsed_content("adaptive#sampler")
    handler = parser.get_parsed_content("adaptive#handler")
    synthetic = json.loads(data["synthetic"].read_text())
    pool = [i for split in ("training", "validation", "test") for i in synthetic[split]
            if i["class"] in ("benign", "malignant")]  # the pool is every split of a synthetic datalist
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["training_counts"]["synthetic"].values()) == len(pool)
    assert metrics["validation_counts"]["synthetic"] == {}
    assert not any(item["synthetic"] for item in parser.get_parsed_content("validate#data"))
    record = json.loads((out / "adaptive_sampler.json").read_text())
    assert [h["step"] for h in record["history"]] == [1, 2, 3] and record["metric"] == "val_auc"
    for before, after in zip([{"benign": 2, "malignant": 2}] + [h["counts"] for h in record["history"]],
                             [h["counts"] for h in record["history"]]):
        assert all(after[c] - before[c] in (-2, 0, 2) for c in before)  # one action per class per step
    assert sampler.counts == record["history"][-1]["counts"]
    assert parser.get_parsed_content("train#dataloader").batch_sampler is sampler  # the trainer's batches
    items = parser.get_parsed_content("train#data")
    batch = next(iter(sampler))
    assert sum(items[i]["synthetic"] for i in batch) == sum(sampler.counts.values())
    resume = torch.load(next(out.glob("resume_*.pt")), weights_only=True)
    assert resume["adaptive"]["history"] == handler.history
    with pytest.raises(Exception) as info:
        run_bundle([f"{CLS}/train.json", f"{CLS}/adaptive_sampler.json"], datalist=str(data["real"]),
                   output_dir=str(tmp_path / "none"), max_epochs=1, **TINY_CLS)
    assert is_input_error(info.value, "no synthetic datalist was given")


def test_classifier_inference_and_torchscript_export(classifier_run: tuple[Path, Any], data: dict[str, Path],
                                                     tmp_path: Path) -> None:
    out, _ = classifier_run
    run_bundle([f"{CLS}/inference.json"], datalist=str(data["real"]), output_dir=str(tmp_path / "inf"),
               ckpt_path=str(out / "model.pt"), image_size=32)
    rows = [line.split(",") for line in (tmp_path / "inf" / "predictions.csv").read_text().splitlines()]
    test = [i for i in json.loads(data["real"].read_text())["test"] if i["class"] != "normal"]
    assert len(rows) == len(test)
    assert all(abs(float(r[1]) + float(r[2]) - 1.0) < 1e-4 for r in rows)  # softmax over benign, malignant
    _export_and_compare(f"{CLS}/train.json", out / "model.pt", tmp_path / "cls.ts", (2, 1, 32, 32),
                        network_name="test_efficientnet")


def _export_and_compare(config: str, ckpt: Path, target: Path, shape: tuple[int, ...], **overrides: Any) -> None:
    """``monai.bundle ckpt_export network_def`` (the function behind ``python -m monai.bundle
    ckpt_export``) writes a TorchScript model that computes what the checkpoint computes."""
    from monai.bundle import ConfigParser, ckpt_export

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        ckpt_export("network_def", filepath=str(target), ckpt_file=str(ckpt), config_file=config, key_in_ckpt="model",
                    **overrides)
        parser = ConfigParser(ConfigParser.load_config_file(config))
        parser.update(overrides)
        eager = parser.get_parsed_content("network_def")
    finally:
        os.chdir(cwd)
    eager.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    scripted = torch.jit.load(str(target))
    x = torch.rand(shape)
    with torch.no_grad():
        assert torch.allclose(scripted.eval()(x), eager.eval()(x), atol=1e-5)


# --- segmentation bundle ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def segmenter_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("seg") / "segmentation"
    workflow = run_bundle([f"{SEG}/train.json", f"{SEG}/ordinary_augmentation.json"], datalist=str(data["real"]),
                          synthetic_datalist=str(data["synthetic"]), ratio=0.5, output_dir=str(out), max_epochs=2,
                          **TINY_SEG)
    return out, workflow


def test_segmenter_trains_with_mixing_and_augmentation(segmenter_run: tuple[Path, Any]) -> None:
    out, workflow = segmenter_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert "val_dice" in metrics["validation"] and metrics["augment"] == "ordinary"
    real, synthetic = metrics["training_counts"]["real"], metrics["training_counts"]["synthetic"]
    assert synthetic == {c: int(n * 0.5 + 0.5) for c, n in real.items()}
    assert metrics["validation_counts"]["synthetic"] == {}
    assert (out / "model.pt").is_file() and (out / "predictions.png").is_file()
    # augmented masks stay binary and aligned in shape with their images
    dataset = workflow.parser.get_parsed_content("train#dataset")
    sample = dataset[0]
    assert sample["image"].shape == sample["label"].shape == (1, 32, 32)
    assert set(torch.unique(sample["label"]).tolist()) <= {0.0, 1.0}


def test_segmenter_evaluates_internal_and_external_sets(segmenter_run: tuple[Path, Any], data: dict[str, Path],
                                                        tmp_path: Path) -> None:
    out, _ = segmenter_run
    workflow = run_bundle([f"{SEG}/evaluate.json"], datalist=str(data["real"]),
                          external_datalists=[str(data["external"])], output_dir=str(out), **TINY_SEG)
    saved = torch.load(out / "model.pt", weights_only=True)["model"]
    network = workflow.parser.get_parsed_content("network")
    assert all(torch.equal(saved[k], v.cpu()) for k, v in network.state_dict().items())
    result = json.loads((out / "test_metrics.json").read_text())
    assert set(result) >= {"test", "BUSI"} and 0 <= result["test"]["dice"] <= 1 and result["BUSI"]["n"] > 0
    with pytest.raises(Exception) as info:
        run_bundle([f"{SEG}/evaluate.json"], datalist=str(data["real"]), external_datalists=[str(data["real48"])],
                   output_dir=str(out), metrics_file=str(tmp_path / "x.json"), **TINY_SEG)
    assert is_input_error(info.value, "external_datalists entry") and is_input_error(info.value, "48x48")


def test_segmenter_inference_writes_masks_and_exports(segmenter_run: tuple[Path, Any], data: dict[str, Path],
                                                      tmp_path: Path) -> None:
    out, _ = segmenter_run
    run_bundle([f"{SEG}/inference.json"], datalist=str(data["real"]), output_dir=str(tmp_path / "inf"),
               ckpt_path=str(out / "model.pt"), image_size=32)
    masks = sorted((tmp_path / "inf").glob("*_mask.png"))
    test = [i for i in json.loads(data["real"].read_text())["test"] if i["class"] != "normal"]
    assert len(masks) == len(test)
    for mask in masks:
        values = np.asarray(Image.open(mask))
        assert values.shape == (32, 32) and set(np.unique(values)) <= {0, 255}
    _export_and_compare(f"{SEG}/train.json", out / "model.pt", tmp_path / "seg.ts", (2, 1, 32, 32),
                        num_res_units=1, seg_channels=[4, 8, 8])


def test_segmenter_multi_gpu_config_on_cpu_with_gloo(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    overrides = {"datalist": str(data["real"]), "output_dir": str(out), "max_epochs": 1, **TINY_SEG, "batch_size": 2}
    run = run_torchrun([f"{SEG}/train.json", f"{SEG}/multi_gpu_train.json"], overrides, tmp_path)
    assert_both_ranks_stepped_rank0_wrote(run, out, tmp_path)


@pytest.mark.parametrize("name", ["unet", "attention_unet", "unetplusplus", "resunet"])
def test_every_segmenter_returns_full_size_logits(name: str) -> None:
    """Each segmenter is an override file of the bundle (the UNet is train.json's own) and returns
    scriptable full-size logits."""
    from monai.bundle import ConfigParser

    from busmonai.experiments.downstream_sweep import train_configs

    parser = ConfigParser()
    parser.read_config([str(p) for p in train_configs("segmentation", name)])
    parser.update({"seg_channels": [4, 8, 8]})
    net = torch.jit.script(parser.get_parsed_content("network_def"))
    assert net(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    assert parser.get_parsed_content("network_name") == name


def test_the_sweep_refuses_a_segmenter_without_an_override_file() -> None:
    from busmonai.experiments.downstream_sweep import train_configs

    with pytest.raises(BusmonaiInputError, match="--networks segformer: no .*segformer.json; use unet or one of"):
        train_configs("segmentation", "segformer")
    names = [p.name for p in train_configs("classification", "resnet50", "ordinary", adaptive=True)]
    assert names == ["train.json", "ordinary_augmentation.json", "adaptive_sampler.json"]
    names = [p.name for p in train_configs("segmentation", "resunet", added=True)]
    assert names == ["train.json", "resunet.json", "added_synthetic.json"]


def test_bundles_reject_bad_inputs(data: dict[str, Path], tmp_path: Path) -> None:
    cases = [
        ({"synthetic_datalist": str(data["relabelled"]), "ratio": 1}, "do not occur in the real training data"),
        ({"ratio": 0.5}, "no synthetic datalist was given"),
        ({"ratio": -1}, "must be a finite number >= 0"),
        ({"augment": "heavy"}, "augment 'heavy'"),
        ({"network_name": "no_such_net"}, "unknown classifier"),
    ]
    for overrides, text in cases:
        with pytest.raises(Exception) as info:
            run_bundle([f"{CLS}/train.json"], datalist=str(data["real"]), output_dir=str(tmp_path / "o"),
                       max_epochs=1, **{**TINY_CLS, **overrides})
        assert is_input_error(info.value, text), (overrides, info.value)


# --- sweep --------------------------------------------------------------------------------------

def test_sweep_runs_resumes_and_prints_tables(data: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from busmonai.experiments import downstream_sweep as sweep

    assert sweep.parse_token("1:2") == ("2", 2.0, "none") and sweep.parse_token("ordinary") == ("ordinary", 0, "ordinary")
    assert sweep.parse_token("adaptive") == ("adaptive", 0.0, "none")
    argv = ["--task", "classification", "--datalist", str(data["real"]), "--synthetic", str(data["synthetic"]),
            "--ratios", "ordinary,1:1,adaptive", "--seeds", "0", "--networks", "test_efficientnet", "--minutes", "0",
            "--max-epochs", "1", "--image-size", "32", "--out", str(tmp_path / "sweep"), "--set", "batch_size=4"]
    assert sweep.main(argv) == 0
    first = capsys.readouterr().out
    results = (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()
    assert len(results) == 3
    assert "AUC on 'test'" in first and "ordinary aug." in first and "R=1" in first and "*" in first
    assert "test_efficientnet: R=1 vs ordinary aug.: " in first and "1 seeds: does not beat" in first  # one seed
    assert (tmp_path / "sweep" / "plot_test_auc.png").is_file()
    rows = [json.loads(line) for line in results]
    assert {r["ratio"] for r in rows} == {"ordinary", "1", "adaptive"}
    by_ratio = {r["ratio"]: r for r in rows}
    assert by_ratio["ordinary"]["training_counts"]["synthetic"] == {}
    assert by_ratio["1"]["training_counts"]["synthetic"] == by_ratio["1"]["training_counts"]["real"]
    assert set(by_ratio["adaptive"]["adaptive_final_counts"]) == {"benign", "malignant"}
    assert by_ratio["adaptive"]["adaptive_steps"] >= 1 and "adaptive" in first
    assert sweep.main(argv) == 0
    second = capsys.readouterr().out
    assert "3 already finished, 0 to run" in second and "AUC on 'test'" in second
    assert (tmp_path / "sweep" / "results.jsonl").read_text().splitlines() == results
    no_synthetic = [a for a in argv if a not in ("--synthetic", str(data["synthetic"]))]
    assert sweep.main([*no_synthetic, "--out", str(tmp_path / "bad")]) == 2
    assert "no --synthetic DATALIST" in capsys.readouterr().err
    segmentation = ["--task", "segmentation", *argv[2:argv.index("--networks")], "--out", str(tmp_path / "seg")]
    assert sweep.main(segmentation) == 2
    assert "classification bundle only" in capsys.readouterr().err


def test_named_synthetic_sources_share_one_sweep(data: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``--synthetic NAME=DATALIST`` and ``NAME:TOKEN``: each arm trains on its own source, all arms
    land in one results file, the tables and the paired differences name the source."""
    from busmonai.experiments import downstream_sweep as sweep

    assert sweep.split_source("filtered:1+ordinary") == ("filtered", "1+ordinary")
    assert sweep.split_source("1:2") == (None, "1:2") and sweep.split_source("2") == (None, "2")
    assert sweep.parse_token("bg:1:2") == ("bg:2", 2.0, "none")
    assert sweep.parse_token("bg:50%+ordinary") == ("bg:0.5+ordinary", 0.5, "ordinary")
    assert sweep.parse_token("bg:pretrain") == ("bg:pretrain", 0.0, "none")
    assert sweep.token_label("bg:0.5+ordinary") == "bg R=0.5+ordinary" and sweep.token_label("0") == "real only"
    with pytest.raises(BusmonaiInputError, match="uses no synthetic images"):
        sweep.parse_token("bg:ordinary")
    assert sweep.parse_synthetic(["a.json", "bg=b.json"]) == {None: "a.json", "bg": "b.json"}
    for bad, text in ((["bg=a.json", "bg=b.json"], "given twice"), (["=a.json"], "NAME=DATALIST"),
                      (["bg="], "NAME=DATALIST")):
        with pytest.raises(BusmonaiInputError, match=text):
            sweep.parse_synthetic(bad)
    series = sweep.plot_series(["0", "ordinary", "1", "bg:0.5", "bg:1+ordinary", "bg:pretrain", "adaptive"])
    assert series == {"synthetic": [(0.0, "0"), (1.0, "1")], "bg": [(0.0, "0"), (0.5, "bg:0.5")],
                      "bg + ordinary": [(0.0, "ordinary"), (1.0, "bg:1+ordinary")]}

    import shutil

    half = json.loads(data["synthetic"].read_text())
    half["training"] = half["training"][::2]  # a second source: every other synthetic image
    for folder in ("images", "masks"):
        shutil.copytree(data["synthetic"].parent / folder, tmp_path / "half" / folder)
    (tmp_path / "half" / "datalist.json").write_text(json.dumps(half))
    argv = ["--task", "classification", "--datalist", str(data["real"]), "--synthetic", str(data["synthetic"]),
            "--synthetic", f"half={tmp_path / 'half' / 'datalist.json'}", "--ratios", "0,1,half:1", "--seeds", "0",
            "--networks", "test_efficientnet", "--minutes", "0", "--max-epochs", "1", "--image-size", "32",
            "--protocol", "added", "--out", str(tmp_path / "sweep"), "--set", "batch_size=4"]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    rows = {r["ratio"]: r for r in map(json.loads, (tmp_path / "sweep" / "results.jsonl").read_text().splitlines())}
    assert set(rows) == {"0", "1", "half:1"}
    assert rows["1"]["source"] is None and rows["1"]["synthetic_datalist"] == str(data["synthetic"].resolve())
    assert rows["half:1"]["source"] == "half"
    assert rows["half:1"]["synthetic_datalist"] == str((tmp_path / "half" / "datalist.json").resolve())
    assert rows["0"]["synthetic_datalist"] is None
    assert rows["half:1"]["iterations"] == rows["1"]["iterations"] == rows["0"]["iterations"]  # same steps
    assert "half R=1" in out and "test_efficientnet: half R=1 vs real only: " in out
    assert (tmp_path / "sweep" / "classification" / "test_efficientnet" / "rhalf_1" / "s0" / "model.pt").is_file()
    report = [*argv, "--report-only", "--markdown", str(tmp_path / "sweep.md")]
    report[report.index("0,1,half:1")] = "0,1,half:1,half:2"
    assert sweep.main(report) == 0  # the tables of the finished cells; the unfinished one is not trained
    out = capsys.readouterr().out
    assert "3 finished, 1 not run (--report-only)" in out and "half R=1 vs real only" in out
    table = (tmp_path / "sweep.md").read_text()
    assert "AUC on 'test', test_efficientnet" in table and "| arm | seeds | mean +- std | steps |" in table
    auc = {t: rows[t]["test"]["test"]["auc"] for t in rows}
    half_row = next(line for line in table.splitlines() if line.startswith("| half R=1 |"))
    assert f"| 1 | {auc['half:1']:.3f} +- 0.000 | {rows['half:1']['iterations']} |" in half_row
    assert f"{auc['half:1'] - auc['0']:+.3f} [-inf, +inf]" in half_row  # one seed: no interval
    assert "half R=2" not in table
    assert len((tmp_path / "sweep" / "results.jsonl").read_text().splitlines()) == 3
    missing = [*argv[: argv.index("--synthetic")], *argv[argv.index("--ratios"):]]
    missing[missing.index("0,1,half:1")] = "half:1"
    assert sweep.main([*missing, "--synthetic", str(data["synthetic"]), "--out", str(tmp_path / "bad")]) == 2
    assert "no --synthetic half=DATALIST" in capsys.readouterr().err


def test_local_pretrained_weights_adapt_to_one_channel(tmp_path: Path) -> None:
    import timm

    from busmonai.networks.downstream import classifier

    source = timm.create_model("test_efficientnet", pretrained=False, in_chans=3, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "imagenet.pt")
    model = classifier("test_efficientnet", pretrained_weights=tmp_path / "imagenet.pt")
    stem = next(k for k, v in source.state_dict().items() if v.ndim == 4)
    assert torch.allclose(model.state_dict()[stem], source.state_dict()[stem].sum(dim=1, keepdim=True))
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 2)
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(BusmonaiInputError, match="no tensor"):
        classifier("test_efficientnet", pretrained_weights=tmp_path / "other.pt")


def test_validation_runs_every_val_interval_iterations(datalist32: Path, tmp_path: Path) -> None:
    """Validation is scheduled by iterations, not epochs, so its cost does not depend on the dataset
    size: with ``val_interval`` 3 it runs after iterations 3, 6, ... and once more at the end."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "seg"
    run_bundle(["bundles/segmentation/configs/train.json"], datalist=str(datalist32), output_dir=str(out),
               image_size=32, batch_size=2, max_epochs=2, val_interval=3, resume=False)
    metrics = json.loads((out / "metrics.json").read_text())
    iterations = metrics["iterations"]
    assert iterations > 3 and iterations > metrics["epochs"]  # several iterations an epoch
    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    validations = len(events.Scalars("val_dice"))
    assert validations == iterations // 3 + (1 if iterations % 3 else 0), (iterations, validations)
    assert [p.name for p in out.glob("resume_*.pt")] == ["resume_checkpoint_final=0.pt"]


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_added_synthetic_keeps_the_steps_and_the_real_passes(task: str, data: dict[str, Path], tmp_path: Path) -> None:
    """With added_synthetic.json every batch holds the batch of real items plus R times as many
    synthetic ones: an epoch is one pass over the real images in every arm."""
    bundle, tiny = (CLS, TINY_CLS) if task == "classification" else (SEG, TINY_SEG)
    common = {"datalist": str(data["real"]), "max_epochs": 2, **tiny, "batch_size": 4}
    base = run_bundle([f"{bundle}/train.json"], output_dir=str(tmp_path / "real"), **common)
    added = run_bundle([f"{bundle}/train.json", f"{bundle}/added_synthetic.json"], output_dir=str(tmp_path / "r1"),
                       synthetic_datalist=str(data["synthetic"]), ratio=1, **common)
    steps = [w.parser.get_parsed_content("train#trainer").state.iteration for w in (base, added)]
    assert steps[0] == steps[1] > 0
    sampler = added.parser.get_parsed_content("added#sampler")
    items = added.parser.get_parsed_content("train#dataset#data")
    batch = next(iter(sampler))
    real = [k for k in batch if not items[k].get("synthetic")]
    assert len(real) == 4 and len(batch) - len(real) == sum(sampler.counts.values()) == 4


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_fixed_schedule_decays_over_the_step_budget_and_keeps_the_last_model(task: str, data: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    """``fixed_schedule.json``: cosine decay over every optimizer step, ``model.pt`` = the final weights
    (not the best validation checkpoint); a time budget is refused."""
    configs, tiny = ((CLS, TINY_CLS) if task == "classification" else (SEG, TINY_SEG))
    files = [f"{configs}/train.json", f"{configs}/fixed_schedule.json"]
    out = tmp_path / "run"
    workflow = run_bundle(files, datalist=str(data["real"]), output_dir=str(out), max_epochs=3, max_minutes=0,
                          lr=0.01, val_interval=1, **tiny)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    savers = [h for h in workflow.parser.get_parsed_content("validate#handlers") if hasattr(h, "_key_metric_checkpoint")]
    assert savers and all(h._key_metric_checkpoint is None for h in savers)  # no best-on-validation model.pt
    steps = workflow.parser.get_parsed_content("schedule_iterations")
    assert trainer.state.iteration == steps == 3 * len(workflow.parser.get_parsed_content("train#dataloader"))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine to zero at the end
    saved = torch.load(out / "model.pt", weights_only=True)["model"]
    final = workflow.parser.get_parsed_content("network").state_dict()
    assert all(torch.equal(saved[k], v.cpu()) for k, v in final.items())
    with pytest.raises(Exception) as error:
        run_bundle(files, datalist=str(data["real"]), output_dir=str(tmp_path / "timed"), max_epochs=3, max_minutes=1,
                   **tiny)
    assert is_input_error(error.value, "needs a step budget")


def test_pretrain_arm_trains_on_synthetic_then_fine_tunes_from_those_weights(data: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    from busmonai.experiments import downstream_sweep as sweep
    from busmonai.networks.described import initialised, load_network

    assert sweep.parse_token("pretrain") == ("pretrain", 0.0, "none")
    assert sweep.parse_token("pretrain+ordinary") == ("pretrain+ordinary", 0.0, "ordinary")
    argv = ["--task", "segmentation", "--datalist", str(data["real"]), "--synthetic", str(data["synthetic"]),
            "--ratios", "pretrain", "--seeds", "0", "--minutes", "0", "--max-epochs", "1", "--image-size", "32",
            "--out", str(tmp_path / "sweep"), "--set", "batch_size=4", "--set", "seg_channels=[4,8,8]"]
    assert sweep.main(argv) == 0
    cell = tmp_path / "sweep" / "segmentation" / "unet" / "rpretrain" / "s0"
    pretrained = json.loads((cell / "pretrain" / "metrics.json").read_text())["training_counts"]
    fine_tuned = json.loads((cell / "metrics.json").read_text())["training_counts"]
    assert pretrained["real"] == {} and sum(pretrained["synthetic"].values()) > 0  # synthetic images alone
    assert fine_tuned["synthetic"] == {} and sum(fine_tuned["real"].values()) > 0  # then the real ones
    # the fine-tuning starts from the pretrained weights: the sweep passes them, the bundle loads them
    assert json.loads((cell / "metrics.json").read_text())["init_ckpt"] == str(cell / "pretrain" / "model.pt")
    assert json.loads((cell / "pretrain" / "metrics.json").read_text())["init_ckpt"] is None
    fresh = load_network(cell / "pretrain" / "model.pt", "init_ckpt", "segmentation", weights=False)
    start = initialised(fresh, cell / "pretrain" / "model.pt", "init_ckpt", "segmentation")
    saved = torch.load(cell / "pretrain" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in start.state_dict().items())
    with pytest.raises(Exception) as error:  # the override file without a synthetic datalist
        run_bundle([f"{SEG}/train.json", f"{SEG}/pretrain_synthetic.json"], datalist=str(data["real"]),
                   output_dir=str(tmp_path / "bad"), max_epochs=1, **TINY_SEG)
    assert is_input_error(error.value, "pass --synthetic_datalist")
