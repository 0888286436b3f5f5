"""LoRA adapters on the LDM UNet (issue 8): wiring, adapter files, the bundle and synthesis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bundle_runner import LDM_TRAIN, REPO, TINY_AUTOENCODER, TINY_UNET, ldm_overrides, run_bundle
from busmonai.errors import BusmonaiInputError, find_input_error
from busmonai.networks import lora, lora_file

LORA_TRAIN = "bundles/lora/configs/train.json"
LORA_INFERENCE = "bundles/lora/configs/inference.json"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """Tiny networks run in milliseconds on one thread but seconds with two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_unet(channels: tuple[int, ...] = (8, 8, 16), context_dim: int = 12) -> torch.nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    torch.manual_seed(0)
    unet = DiffusionModelUNet(spatial_dims=2, in_channels=4, out_channels=4, channels=list(channels),
                              attention_levels=[False, True, True], num_res_blocks=1, num_head_channels=[0, 8, 8],
                              norm_num_groups=4, with_conditioning=True, transformer_num_layers=1,
                              cross_attention_dim=context_dim)
    with torch.no_grad():  # MONAI zero-initialises output convolutions; a trained UNet has none
        for param in unet.parameters():
            if not param.any():
                param.normal_(0.0, 0.1)
    return unet


def _ldm(**kwargs: object) -> torch.nn.Module:
    from busmonai.networks.latent_diffusion import LatentDiffusionModel

    return LatentDiffusionModel(_tiny_unet(**kwargs))  # type: ignore[arg-type]


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]), torch.randn(2, 5, 12, generator=g)


def _randomise_adapter(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in lora.trainable_parameters(model):
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("targets", ["attention", "cross_attention"])
@pytest.mark.parametrize("rank", [2, 4, 8])
def test_parameter_count_matches_formula(targets: str, rank: int) -> None:
    model = _ldm()
    layers = lora.linear_layers(model.unet)
    names = lora.resolve_targets(model, targets)
    kinds = lora.attention_layers(model.unet)
    expected_kinds = {"cross_attention"} if targets == "cross_attention" else {"self_attention", "cross_attention"}
    assert names and {kinds[n] for n in names} == expected_kinds
    assert {n.rpartition(".")[2] for n in names} == {"to_q", "to_k", "to_v", "out_proj"}
    formula = sum(rank * (layers[n].in_features + layers[n].out_features) for n in names)
    assert lora.lora_parameter_count(model, targets, rank) == formula
    lora.apply_lora(model, targets, rank)
    assert lora.count_trainable(model) == formula
    assert all(".lora_" in k for k, p in model.named_parameters() if p.requires_grad)


def test_paper_sized_unet_counts_on_meta_device() -> None:
    """The SD v1.5 geometry in MONAI gives CP's numbers: 859.52M full, 0.40M / 0.80M / 1.59M LoRA."""
    from monai.networks.nets import DiffusionModelUNet

    with torch.device("meta"):
        unet = DiffusionModelUNet(spatial_dims=2, in_channels=4, out_channels=4, channels=[320, 640, 1280, 1280],
                                  attention_levels=[True, True, True, False], num_res_blocks=2,
                                  num_head_channels=[64] * 4, with_conditioning=True, transformer_num_layers=1,
                                  cross_attention_dim=768)
    assert round(lora.count_parameters(unet) / 1e6, 2) == 859.52
    assert [round(lora.lora_parameter_count(unet, "attention", r) / 1e6, 2) for r in (2, 4, 8)] == [0.40, 0.80, 1.59]


def test_adapter_training_changes_output_and_keeps_base_bit_identical() -> None:
    model = _ldm()
    x, t, c = _inputs()
    before = model(x, t, c).detach()
    base = {k: v.clone() for k, v in lora.base_state_dict(model).items()}
    lora.apply_lora(model, "attention", rank=4)
    assert torch.equal(model(x, t, c), before)  # B = 0 at start
    optimizer = torch.optim.AdamW(lora.trainable_parameters(model), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(x, t, c).pow(2).mean().backward()
        optimizer.step()
    assert not torch.allclose(model(x, t, c), before)
    after = lora.base_state_dict(model)
    assert set(after) == set(base)
    assert all(torch.equal(after[k], base[k]) for k in base)


def test_merge_then_unmerge_restores_base(tmp_path: Path) -> None:
    model = _ldm()
    x, t, c = _inputs()
    base = {k: v.clone() for k, v in lora.base_state_dict(model).items()}
    lora.apply_lora(model, "attention", rank=4, alpha=8)
    _randomise_adapter(model)
    model.eval()
    adapted = model(x, t, c).detach()
    lora.merge(model)
    assert lora.is_merged(model)
    merged_base = lora.base_state_dict(model)
    assert any(not torch.equal(merged_base[k], base[k]) for k in base)
    assert torch.allclose(model(x, t, c), adapted, atol=1e-5)
    lora.unmerge(model)
    assert not lora.is_merged(model)
    restored = lora.base_state_dict(model)
    assert all(torch.allclose(restored[k], base[k], atol=1e-6) for k in base)


def test_saved_adapter_reloads_to_same_output(tmp_path: Path) -> None:
    model = _ldm()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora.apply_lora(model, ["to_q", "attn2.to_k"], rank=2, base_digest="abc")
    _randomise_adapter(model)
    model.eval()
    x, t, c = _inputs()
    expected = model(x, t, c)
    path = lora_file.save_adapter(model, tmp_path / "adapter.safetensors")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["rank"] == 2 and config["base_ldm_digest"] == "abc" and config["targets"] == ["to_q", "attn2.to_k"]
    assert config["n_parameters"] == lora.count_trainable(model)
    fresh = _ldm()
    fresh.load_state_dict(base)
    lora_file.load_adapter(fresh, path, base_digest="abc")
    assert torch.equal(fresh(x, t, c), expected)
    merged = _ldm()
    merged.load_state_dict(base)
    lora_file.load_adapter(merged, path, merge_weights=True)
    assert torch.allclose(merged(x, t, c), expected, atol=1e-5)


def test_bad_adapters_and_targets_give_clear_errors(tmp_path: Path) -> None:
    model = lora.apply_lora(_ldm(), "attention", rank=2, base_digest="aaaa")
    path = lora_file.save_adapter(model, tmp_path / "adapter.safetensors")
    with pytest.raises(BusmonaiInputError, match="trained for a different UNet.*to_q"):
        lora_file.load_adapter(_ldm(channels=(8, 16, 16)), path)
    with pytest.raises(BusmonaiInputError, match="trained for a different UNet"):
        lora_file.load_adapter(_ldm(context_dim=16), path)
    with pytest.raises(BusmonaiInputError, match="trained on the LDM checkpoint aaaa"):
        lora_file.load_adapter(_ldm(), path, base_digest="bbbb")
    with pytest.raises(BusmonaiInputError) as info:
        lora.apply_lora(_ldm(), ["to_q", "to_query"], rank=2)
    message = str(info.value)
    assert "'to_query'" in message and all(name in message for name in ("to_q", "to_k", "to_v", "out_proj",
                                                                         "cross_attention"))
    with pytest.raises(BusmonaiInputError, match="lora_rank"):
        lora.apply_lora(_ldm(), "attention", rank=0)
    with pytest.raises(BusmonaiInputError, match="not found"):
        lora_file.load_adapter(_ldm(), tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(BusmonaiInputError, match="not a safetensors"):
        lora_file.load_adapter(_ldm(), tmp_path / "junk.safetensors")


# ------------------------------------------------------------------------------------------ bundle


@pytest.fixture(scope="module")
def base_ldm(trained_ldm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny LDM with its still-zero output layers (MONAI zero-initialises them; two
    training steps barely move them) filled in, so attention, and thus LoRA, affects the output."""
    checkpoint = torch.load(trained_ldm / "model.pt", weights_only=True)
    state = checkpoint["model"]
    g = torch.Generator().manual_seed(0)
    for key, value in state.items():
        if value.is_floating_point() and value.ndim > 0 and value.abs().max() < 1e-3:
            state[key] = 0.1 * torch.randn(value.shape, generator=g)
    out = tmp_path_factory.mktemp("base_ldm")
    torch.save(checkpoint, out / "model.pt")
    return out


@pytest.fixture(scope="module")
def trained_lora(datalist32: Path, trained_autoencoder: Path, base_ldm: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "lora"
    run_bundle([LORA_TRAIN], **ldm_overrides(datalist32, trained_autoencoder, out, max_epochs=2,
                                             ldm_ckpt=str(base_ldm / "model.pt"), lora_rank=2, ema_decay=0.5,
                                             domain_in_prompt=True, lr=0.05, warmup_steps=1))
    return out


def test_bundle_trains_adapter_only(trained_lora: Path, base_ldm: Path) -> None:
    adapter = trained_lora / "adapter.safetensors"
    for name in ("adapter.safetensors", "adapter_config.json", "metrics.json", "samples.png"):
        assert (trained_lora / name).is_file(), name
    assert list(trained_lora.glob("events.out.tfevents.*"))
    assert adapter.stat().st_size < 100_000
    resume = next(trained_lora.glob("resume_*.pt"))
    assert resume.stat().st_size < 10 * adapter.stat().st_size + 100_000  # no frozen UNet in it
    metrics = json.loads((trained_lora / "metrics.json").read_text())
    config = lora_file.read_adapter_config(adapter)
    assert metrics["trainable_parameters"] == config["n_parameters"] > 0
    assert metrics["trainable_parameters"] < metrics["unet_parameters"] / 5
    assert config["prompt_domain"] == "BUSI" and config["rank"] == 2
    from safetensors.torch import load_file

    assert any(v.abs().sum() > 0 for k, v in load_file(str(adapter)).items() if "lora_B" in k)  # trained


def test_bundle_resumes_from_adapter_checkpoint(trained_lora: Path, trained_autoencoder: Path,
                                                base_ldm: Path, datalist32: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    shutil.copytree(trained_lora, out)
    before = json.loads((out / "metrics.json").read_text())["iterations"]
    workflow = run_bundle([LORA_TRAIN], **ldm_overrides(datalist32, trained_autoencoder, out, max_epochs=3,
                                                        ldm_ckpt=str(base_ldm / "model.pt"), lora_rank=2,
                                                        domain_in_prompt=True))
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.resumed_iteration == before and trainer.state.epoch == 3


def test_inference_with_adapter_is_reproducible(trained_lora: Path, trained_autoencoder: Path,
                                                base_ldm: Path, tmp_path: Path) -> None:
    common = {"autoencoder_ckpt": str(trained_autoencoder / "model.pt"), "ldm_ckpt": str(base_ldm / "model.pt"),
              "lora_adapter": str(trained_lora / "adapter.safetensors"), "image_size": 32, "steps": 2,
              "n_per_prompt": 2, **TINY_AUTOENCODER, **TINY_UNET}
    runs = {}
    for name, merge in (("a", False), ("b", False), ("merged", True)):
        workflow = run_bundle([LORA_INFERENCE], output_dir=str(tmp_path / name), merge=merge, **common)
        runs[name] = sorted((tmp_path / name / "samples").glob("*.png"))
        assert runs[name]
    assert lora.is_merged(workflow.parser.get_parsed_content("network"))
    assert json.loads((tmp_path / "a" / "samples.json").read_text())["prompts"][0].startswith("BUSI: ")
    for a, b in zip(runs["a"], runs["b"]):
        assert a.read_bytes() == b.read_bytes()
    from busmonai.networks.described import load_network

    adapted = workflow.parser.get_parsed_content("network")
    base = load_network(base_ldm / "model.pt", "ldm_ckpt", "ldm").eval()
    prompts = json.loads((tmp_path / "a" / "samples.json").read_text())["prompts"][:2]
    context = workflow.parser.get_parsed_content("text_encoder").encode(prompts)
    x = torch.randn(2, adapted.unet.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.equal(adapted(x, torch.tensor([5, 900]), context), base(x, torch.tensor([5, 900]), context))


def test_adapter_for_other_unet_is_refused_by_bundle(trained_lora: Path, trained_autoencoder: Path,
                                                     base_ldm: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    model = lora.apply_lora(_ldm(), "attention", rank=2)
    lora_file.save_adapter(model, other)
    with pytest.raises(Exception) as info:
        run_bundle([LORA_INFERENCE], output_dir=str(tmp_path / "x"), lora_adapter=str(other), image_size=32,
                   autoencoder_ckpt=str(trained_autoencoder / "model.pt"), ldm_ckpt=str(base_ldm / "model.pt"),
                   steps=1, n_per_prompt=1, **TINY_AUTOENCODER, **TINY_UNET)
    error = find_input_error(info.value)
    assert error is not None and "different UNet" in str(error)


def test_generate_with_lora(trained_lora: Path, trained_autoencoder: Path, base_ldm: Path,
                            tmp_path: Path) -> None:
    from busmonai.cli import main

    args = ["--mode", "text", "--n", "2", "--image-size", "32", "--steps", "2",
            "--autoencoder-ckpt", str(trained_autoencoder / "model.pt"), "--ldm-ckpt", str(base_ldm / "model.pt")]
    for key, value in {**TINY_AUTOENCODER, **TINY_UNET}.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    assert main(["generate", "--out", str(tmp_path / "lora"), "--lora", str(trained_lora / "adapter.safetensors"),
                 *args]) == 0
    assert len(list((tmp_path / "lora" / "images").glob("*.png"))) == 2
    settings = json.loads((tmp_path / "lora" / "datalist.json").read_text())["settings"]
    assert "lora" in settings["checkpoints"]
    assert main(["generate", "--out", str(tmp_path / "bad"), "--lora", str(tmp_path / "none.safetensors"),
                 *args]) == 2
    from busmonai.bundles import bundle_config, run_config

    workflow = run_config([bundle_config("controlnet", "inference.json")], run=False, mode="text",
                          lora_adapter=str(trained_lora / "adapter.safetensors"), image_size=32,
                          autoencoder_ckpt=str(trained_autoencoder / "model.pt"),
                          ldm_ckpt=str(base_ldm / "model.pt"), **TINY_AUTOENCODER, **TINY_UNET)
    assert lora.has_adapter(workflow.parser.get_parsed_content("network"))


def test_lora_bundle_config_keys_match_ldm() -> None:
    from monai.bundle import ConfigParser

    train = ConfigParser.load_config_file(REPO / LORA_TRAIN)
    assert train["ldm_ckpt"] == "runs/ldm/model.pt" and train["output_dir"] == "runs/lora"
    assert ConfigParser.load_config_file(REPO / LORA_INFERENCE)["lora_adapter"] == "runs/lora/adapter.safetensors"
    assert LDM_TRAIN.endswith("train.json")
