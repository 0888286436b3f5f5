"""Stable Diffusion folders (diffusers layout) converted to MONAI networks: busmonai.networks.stable_diffusion.

Tiny randomly initialised diffusers models are saved with ``save_pretrained`` into a temporary folder
in SD's layout (nothing is downloaded), converted, and compared with diffusers' own outputs. Every
parameter is perturbed first, so that no zero-initialised layer hides a wrongly mapped tensor; the
swap tests show that the same equivalence check fails when one tensor goes to the wrong place.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from bundle_runner import REPO, vocab_text_encoder
from monai.bundle import ConfigParser
from monai.networks.nets import ControlNet, DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from busmonai.errors import BusmonaiInputError, find_input_error
from busmonai.networks import described, sd_weights
from busmonai.networks import stable_diffusion as sd
from busmonai.networks.sd_autoencoder import LDMAutoencoderKL

diffusers = pytest.importorskip("diffusers", reason="the reference models come from diffusers: pip install -e '.[test]'")

TOL = 1e-4
CONTEXT = 32
VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 3,
       "up_block_types": ("UpDecoderBlock2D",) * 3, "block_out_channels": (16, 32, 32), "layers_per_block": 2,
       "latent_channels": 4, "norm_num_groups": 8}
UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (32, 32, 64), "layers_per_block": 1, "cross_attention_dim": CONTEXT,
        "attention_head_dim": 8, "norm_num_groups": 8}
EMBEDDING = (16, 32)  # the ControlNet's conditioning embedding: masks at 2x the latent size


def perturb(model: nn.Module, seed: int) -> nn.Module:
    """Add noise to every parameter (diffusers zero-initialises the ControlNet's output convolutions)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def equivalent(a: torch.Tensor | list[torch.Tensor], b: torch.Tensor | list[torch.Tensor]) -> bool:
    """Whether the outputs agree within TOL (the check every equivalence and swap test uses)."""
    pairs = list(zip(a, b)) if isinstance(a, (list, tuple)) else [(a, b)]
    return len(pairs) > 0 and all(x.shape == y.shape and (x - y).abs().max().item() < TOL for x, y in pairs)


def write_clip(folder: Path, dim: int) -> None:
    """A tiny CLIP text encoder and tokenizer (as tests/test_text_encoders.py builds them)."""
    from test_text_encoders import write_tiny_clip_tokenizer

    transformers = pytest.importorskip("transformers")
    write_tiny_clip_tokenizer(folder / "raw_tokenizer")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(folder / "raw_tokenizer"), local_files_only=True)
    config = transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    transformers.CLIPTextModel(config).save_pretrained(str(folder / "text_encoder"))
    tokenizer.save_pretrained(str(folder / "tokenizer"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """A tiny SD folder (vae/, unet/, text_encoder/, tokenizer/), a ControlNet folder, and the diffusers models."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("sd")
    vae = perturb(diffusers.AutoencoderKL(**VAE), 1)
    unet = perturb(diffusers.UNet2DConditionModel(**UNET), 2)
    control = perturb(diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=EMBEDDING), 3)
    vae.save_pretrained(str(root / "vae"))
    unet.save_pretrained(str(root / "unet"))
    control.save_pretrained(str(root.parent / "controlnet"))
    write_clip(root, CONTEXT)
    return types.SimpleNamespace(root=root, controlnet_dir=root.parent / "controlnet", vae=vae, unet=unet,
                                 control=control)


@pytest.fixture()
def inputs() -> types.SimpleNamespace:
    g = torch.Generator().manual_seed(7)
    return types.SimpleNamespace(
        image=torch.rand(2, 1, 32, 32, generator=g), latent=torch.randn(2, 4, 8, 8, generator=g),
        timesteps=torch.tensor([3, 700]), context=torch.randn(2, 5, CONTEXT, generator=g),
        mask=(torch.rand(2, 1, 16, 16, generator=g) > 0.5).float(),
    )


# ------------------------------------------------------------------ equivalence with diffusers
@torch.no_grad()
def vae_outputs(network: nn.Module, x: torch.Tensor, z: torch.Tensor, diffusers_vae: nn.Module | None = None) -> list:
    if diffusers_vae is None:
        mu, sigma = network.encode(x)
        return [mu, sigma, network.decode(z)]
    posterior = diffusers_vae.encode(x).latent_dist
    return [posterior.mean, posterior.std, diffusers_vae.decode(z).sample]


def test_vae_rgb_matches_diffusers(tiny: types.SimpleNamespace, inputs: types.SimpleNamespace) -> None:
    network = sd.autoencoder(tiny.root, image_channels=3).eval()
    assert type(network) is LDMAutoencoderKL and network.latent_channels == 4
    x = inputs.image.repeat(1, 3, 1, 1) * 2 - 1
    assert equivalent(vae_outputs(network, x, inputs.latent), vae_outputs(None, x, inputs.latent, tiny.vae))


def test_vae_grey_rule(tiny: types.SimpleNamespace, inputs: types.SimpleNamespace) -> None:
    """A grey image goes in as (x, x, x) would; the grey output is the mean of SD's R, G, B."""
    network = sd.autoencoder(tiny.root, image_channels=1).eval()
    mu, sigma, out = vae_outputs(network, inputs.image, inputs.latent)
    ref_mu, ref_sigma, ref_out = vae_outputs(None, inputs.image.repeat(1, 3, 1, 1), inputs.latent, tiny.vae)
    assert out.shape[1] == 1 and equivalent([mu, sigma, out], [ref_mu, ref_sigma, ref_out.mean(1, keepdim=True)])


@torch.no_grad()
def unet_pair(network: nn.Module, reference: nn.Module, i: types.SimpleNamespace, **residuals: object) -> tuple:
    down, mid = residuals.get("monai", (None, None))  # type: ignore[misc]
    ref_down, ref_mid = residuals.get("diffusers", (None, None))  # type: ignore[misc]
    ours = network(i.latent, timesteps=i.timesteps, context=i.context, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid)
    theirs = reference(i.latent, i.timesteps, encoder_hidden_states=i.context, down_block_additional_residuals=ref_down,
                       mid_block_additional_residual=ref_mid).sample
    return ours, theirs


@pytest.mark.parametrize("flash", [False, True], ids=["attention", "flash-attention"])
def test_unet_matches_diffusers(tiny: types.SimpleNamespace, inputs: types.SimpleNamespace, flash: bool) -> None:
    network = sd.unet(tiny.root, use_flash_attention=flash).eval()
    assert type(network) is DiffusionModelUNet
    assert equivalent(*unet_pair(network, tiny.unet, inputs))


def test_sd2_style_unet_matches_diffusers(tmp_path: Path, inputs: types.SimpleNamespace) -> None:
    """SD 2.x options convert exactly: linear projections (= 1x1 convs), per-level heads, upcast attention,
    and the legacy .bin weights file."""
    torch.manual_seed(4)
    options = {**UNET, "use_linear_projection": True, "attention_head_dim": [2, 4, 4], "upcast_attention": True}
    reference = perturb(diffusers.UNet2DConditionModel(**options), 5)
    reference.save_pretrained(str(tmp_path / "unet"), safe_serialization=False)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.bin").is_file()
    network = sd.unet(tmp_path).eval()
    assert equivalent(*unet_pair(network, reference, inputs))


@torch.no_grad()
def controlnet_pair(network: nn.Module, reference: nn.Module, i: types.SimpleNamespace) -> tuple:
    down, mid = network(i.latent, timesteps=i.timesteps, controlnet_cond=i.mask, context=i.context)
    ref_down, ref_mid = reference(i.latent, i.timesteps, encoder_hidden_states=i.context,
                                     controlnet_cond=i.mask.repeat(1, 3, 1, 1), return_dict=False)
    return (list(down), mid), (list(ref_down), ref_mid)


def test_controlnet_residuals_and_unet_with_them(tiny: types.SimpleNamespace, inputs: types.SimpleNamespace) -> None:
    network = sd.controlnet(tiny.controlnet_dir, conditioning_channels=1).eval()
    assert type(network) is ControlNet
    (down, mid), (ref_down, ref_mid) = controlnet_pair(network, tiny.control, inputs)
    assert len(down) == len(ref_down) == 1 + 3 * 1 + 2 and equivalent([*down, mid], [*ref_down, ref_mid])
    unet = sd.unet(tiny.root).eval()
    assert equivalent(*unet_pair(unet, tiny.unet, inputs, monai=(down, mid), diffusers=(ref_down, ref_mid)))


def test_controlnet_from_sd_unet_encoder(tiny: types.SimpleNamespace, inputs: types.SimpleNamespace) -> None:
    """init_controlnet(sd_path=...) copies exactly the SD UNet's encoder: it matches diffusers'
    ControlNetModel.from_unet(unet) once both have the same ControlNet-only parts (conditioning
    embedding, zero convolutions; zero-initialised in both, taken from the perturbed ControlNet here)."""
    reference = diffusers.ControlNetModel.from_unet(tiny.unet, conditioning_embedding_out_channels=EMBEDDING)
    own = {k: v for k, v in tiny.control.state_dict().items() if k.startswith(sd.CONTROLNET_OWN)}
    reference.load_state_dict(own, strict=False)
    arch = sd.controlnet_arch(tiny.controlnet_dir, like={"conditioning_embedding_in_channels": 1})
    network = described.build(arch).eval()
    copied = sd.init_controlnet(network, nn.Identity(), sd_path=tiny.root)
    assert copied and not any(key.startswith(sd.CONTROLNET_OWN) for key in copied)
    full = sd.controlnet(tiny.controlnet_dir).state_dict()
    network.load_state_dict({k: v for k, v in full.items() if k.startswith(sd.CONTROLNET_OWN)}, strict=False)
    (down, mid), (ref_down, ref_mid) = controlnet_pair(network, reference.eval(), inputs)
    assert equivalent([*down, mid], [*ref_down, ref_mid])


def test_init_controlnet_default_copies_the_ldm_unet() -> None:
    kw = {"spatial_dims": 2, "in_channels": 4, "channels": (8, 8), "attention_levels": (False, True),
          "num_res_blocks": 1, "num_head_channels": 8, "norm_num_groups": 4, "with_conditioning": True,
          "cross_attention_dim": 8}
    unet, control = DiffusionModelUNet(out_channels=4, **kw), ControlNet(**kw)
    copied = sd.init_controlnet(control, unet)
    assert copied and torch.equal(control.state_dict()[copied[0]], unet.state_dict()[copied[0]])


# ------------------------------------------------------------------ a wrong mapping is caught
SWAPS = {
    "unet": [("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
              "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"),
             ("down_blocks.1.resnets.0.conv1.conv.weight", "down_blocks.1.resnets.0.conv2.conv.weight"),
             ("middle_block.resnet_1.norm1.weight", "middle_block.resnet_2.norm1.weight"),
             ("up_blocks.2.attentions.0.transformer_blocks.0.attn2.to_v.weight",
              "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_v.weight")],
    "vae": [("encoder.blocks.1.conv1.conv.weight", "encoder.blocks.2.conv1.conv.weight"),
            ("quant_conv_mu.conv.weight", "quant_conv_log_sigma.conv.weight"),
            ("decoder.blocks.2.attn.to_q.weight", "decoder.blocks.2.attn.to_k.weight")],
    "controlnet": [("controlnet_down_blocks.1.conv.weight", "controlnet_down_blocks.2.conv.weight"),
                   ("controlnet_cond_embedding.blocks.0.conv.bias", "controlnet_cond_embedding.conv_in.conv.bias")],
}


def _swapped(network: nn.Module, a: str, b: str) -> nn.Module:
    state = network.state_dict()
    assert state[a].shape == state[b].shape and not torch.equal(state[a], state[b])
    state[a], state[b] = state[b].clone(), state[a].clone()
    network.load_state_dict(state)
    return network


@pytest.mark.parametrize(("part", "a", "b"), [(p, a, b) for p, pairs in SWAPS.items() for a, b in pairs])
def test_one_swapped_tensor_breaks_equivalence(tiny: types.SimpleNamespace, inputs: types.SimpleNamespace,
                                                part: str, a: str, b: str) -> None:
    network = {"unet": lambda: sd.unet(tiny.root), "vae": lambda: sd.autoencoder(tiny.root, image_channels=1),
               "controlnet": lambda: sd.controlnet(tiny.controlnet_dir)}[part]().eval()
    assert equivalent(*_outputs(part, network, tiny, inputs))
    assert not equivalent(*_outputs(part, _swapped(network, a, b), tiny, inputs))


def _ours(part: str, network: nn.Module, i: types.SimpleNamespace) -> Any:
    """Our network's side of :func:`_outputs`."""
    if part == "unet":
        return network(i.latent, timesteps=i.timesteps, context=i.context)
    if part == "vae":
        return vae_outputs(network, i.image, i.latent)
    down, mid = network(i.latent, timesteps=i.timesteps, controlnet_cond=i.mask, context=i.context)
    return [*down, mid]


def _theirs(part: str, tiny: types.SimpleNamespace, i: types.SimpleNamespace) -> Any:
    """The diffusers reference's side of :func:`_outputs`."""
    if part == "unet":
        return tiny.unet(i.latent, i.timesteps, encoder_hidden_states=i.context).sample
    if part == "vae":
        ref = vae_outputs(None, i.image.repeat(1, 3, 1, 1), i.latent, tiny.vae)
        return [*ref[:2], ref[2].mean(1, keepdim=True)]
    ref_down, ref_mid = tiny.control(i.latent, i.timesteps, encoder_hidden_states=i.context,
                                     controlnet_cond=i.mask.repeat(1, 3, 1, 1), return_dict=False)
    return [*ref_down, ref_mid]


def _outputs(part: str, network: nn.Module, tiny: types.SimpleNamespace, i: types.SimpleNamespace) -> tuple:
    """(ours, diffusers') for one part: the tensors every equivalence test compares."""
    return _ours(part, network, i), _theirs(part, tiny, i)


@pytest.mark.parametrize("part", ["unet", "vae", "controlnet"])
def test_every_converted_tensor_reaches_the_compared_outputs(tiny: types.SimpleNamespace, inputs: types.SimpleNamespace,
                                                             part: str) -> None:
    """Scrambling any one converted tensor breaks the equivalence, so no tensor's mapping goes unchecked.
    The exception is the bias of an attention key, which softmax ignores (it adds q.b to every score)."""
    network = {"unet": lambda: sd.unet(tiny.root), "vae": lambda: sd.autoencoder(tiny.root, image_channels=1),
               "controlnet": lambda: sd.controlnet(tiny.controlnet_dir)}[part]().eval()
    state = {key: value.clone() for key, value in network.state_dict().items()}
    with torch.no_grad():
        reference = _theirs(part, tiny, inputs)  # the reference does not change: computed once
        assert equivalent(_ours(part, network, inputs), reference)
        unchecked = []
        for key, value in state.items():
            order = torch.randperm(value.numel(), generator=torch.Generator().manual_seed(0))
            scrambled = value.flatten()[order].reshape(value.shape) if value.numel() > 1 else value + 0.5
            network.load_state_dict({**state, key: scrambled})
            if equivalent(_ours(part, network, inputs), reference) and not key.endswith("attn.to_k.bias"):
                unchecked.append(key)
    assert not unchecked


def test_a_wrong_table_entry_breaks_equivalence(tiny: types.SimpleNamespace, inputs: types.SimpleNamespace,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for the mapping itself: self-attention's query and key exchanged in the leaf table."""
    right = sd_weights.transformer_leaves

    def wrong(num_layers: int) -> dict:
        table = right(num_layers)
        table["transformer_blocks.0.attn1.to_q"], table["transformer_blocks.0.attn1.to_k"] = \
            table["transformer_blocks.0.attn1.to_k"], table["transformer_blocks.0.attn1.to_q"]
        return table

    monkeypatch.setattr(sd_weights, "transformer_leaves", wrong)
    assert not equivalent(*unet_pair(sd.unet(tiny.root).eval(), tiny.unet, inputs))


# ------------------------------------------------------------------ refused folders
def _copy_part(tiny: types.SimpleNamespace, part: str, target: Path, **config_changes: object) -> Path:
    import shutil

    shutil.copytree(tiny.root / part, target / part)
    config_file = target / part / "config.json"
    config = json.loads(config_file.read_text())
    config.update(config_changes)
    config_file.write_text(json.dumps(config))
    return config_file


def test_folder_without_unet_config(tiny: types.SimpleNamespace, tmp_path: Path) -> None:
    _copy_part(tiny, "vae", tmp_path)
    with pytest.raises(BusmonaiInputError, match=r"unet/config\.json is missing"):
        sd.unet_arch(tmp_path)
    with pytest.raises(BusmonaiInputError, match="does not exist"):
        sd.unet_arch(tmp_path / "absent")


@pytest.mark.parametrize(("change", "option"), [
    ({"addition_embed_type": "text_time", "addition_time_embed_dim": 256}, "addition_embed_type"),  # SD-XL
    ({"transformer_layers_per_block": [1, 2, 1]}, "transformer_layers_per_block"),
    ({"transformer_layers_per_block": [[1], [2, 2], 1]}, "transformer_layers_per_block"),  # SD-XL's nested form
    ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
    ({"flip_sin_to_cos": False}, "flip_sin_to_cos"),
    ({"down_block_types": ["SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]}, "down_block_types"),
    ({"up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}, "up_block_types"),
    ({"some_future_option": 3}, "some_future_option"),
    ({"_class_name": "UNet2DModel"}, "_class_name"),
])
def test_unet_options_monai_cannot_express(tiny: types.SimpleNamespace, tmp_path: Path, change: dict,
                                           option: str) -> None:
    config_file = _copy_part(tiny, "unet", tmp_path, **change)
    with pytest.raises(BusmonaiInputError) as error:
        sd.unet_arch(tmp_path)
    assert str(config_file) in str(error.value) and option in str(error.value)


@pytest.mark.parametrize(("change", "option"), [
    ({"mid_block_add_attention": False}, "mid_block_add_attention"),
    ({"use_quant_conv": False}, "use_quant_conv"),
    ({"down_block_types": ["AttnDownEncoderBlock2D"] * 3}, "down_block_types"),
])
def test_vae_options_monai_cannot_express(tiny: types.SimpleNamespace, tmp_path: Path, change: dict, option: str) -> None:
    config_file = _copy_part(tiny, "vae", tmp_path, **change)
    with pytest.raises(BusmonaiInputError) as error:
        sd.autoencoder_arch(tmp_path)
    assert str(config_file) in str(error.value) and option in str(error.value)


@pytest.mark.parametrize(("change", "expected"), [
    ({"layers_per_block": 2}, "missing"),  # the config asks for ResNets the file lacks
    ({"cross_attention_dim": 16}, "of another shape"),
    ({"layers_per_block": 1, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
      "up_block_types": ["UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"]}, "unexpected"),
])
def test_weights_that_do_not_match_their_config(tiny: types.SimpleNamespace, tmp_path: Path, change: dict,
                                                expected: str) -> None:
    _copy_part(tiny, "unet", tmp_path, **change)
    with pytest.raises(BusmonaiInputError, match=expected) as error:
        sd.unet(tmp_path)
    assert str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors") in str(error.value)


def test_old_vae_attention_names_and_missing_weights(tiny: types.SimpleNamespace, tmp_path: Path,
                                                    inputs: types.SimpleNamespace) -> None:
    from safetensors.torch import load_file, save_file

    _copy_part(tiny, "vae", tmp_path)
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in load_file(str(weights)).items():
        for new, legacy in old.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{legacy}.")
        state[key] = value.contiguous()
    save_file(state, str(weights))
    x = inputs.image.repeat(1, 3, 1, 1)
    assert equivalent(vae_outputs(sd.autoencoder(tmp_path, image_channels=3).eval(), x, inputs.latent),
                      vae_outputs(None, x, inputs.latent, tiny.vae))
    weights.unlink()
    with pytest.raises(BusmonaiInputError, match="has no weights"):
        sd.autoencoder(tmp_path)


def test_bundle_settings_that_do_not_fit(tiny: types.SimpleNamespace) -> None:
    with pytest.raises(BusmonaiInputError, match="clip_text_encoder_arch"):
        sd.unet_arch(tiny.root, like={"cross_attention_dim": 384})
    with pytest.raises(BusmonaiInputError, match="latent_channels"):
        sd.autoencoder_arch(tiny.root, like={"latent_channels": 8})
    with pytest.raises(BusmonaiInputError, match="cannot become 2"):
        sd.autoencoder_arch(tiny.root, like={"in_channels": 2})
    widened = sd.unet(tiny.root, in_channels=5)  # mask_input.json: the extra input starts with zero weights
    weight = widened.state_dict()["conv_in.conv.weight"]
    assert weight.shape[1] == 5 and torch.count_nonzero(weight[:, 4]) == 0


# ------------------------------------------------------------------ recorded and rebuilt (described)
def test_converted_networks_are_described_and_rebuilt(tiny: types.SimpleNamespace, tmp_path: Path,
                                                      inputs: types.SimpleNamespace) -> None:
    arch = sd.autoencoder_arch(tiny.root, like={"in_channels": 1, "out_channels": 1})
    record = described.ArchitectureRecord("autoencoder", {"image_size": 32}, network=arch)
    assert record.parts["network"]["_target_"] == "busmonai.networks.sd_autoencoder.LDMAutoencoderKL"
    network = sd.load_autoencoder_weights(described.build(arch), tiny.root).eval()
    path = described.save_network(network, record, tmp_path / "model.pt")
    rebuilt = described.load_network(path, "autoencoder_ckpt", "autoencoder").eval()
    assert equivalent(vae_outputs(rebuilt, inputs.image, inputs.latent), vae_outputs(network, inputs.image, inputs.latent))
    for part in (sd.unet_arch(tiny.root), sd.controlnet_arch(tiny.controlnet_dir)):
        description = described.describe(part)
        assert description["_target_"].startswith("monai.networks.nets.")
        assert type(described.build(description)) is part.func


# ------------------------------------------------------------------ the paper profiles with sd_path
def _paper(bundle: str, **overrides: object) -> ConfigParser:
    base = REPO / "bundles" / bundle / "configs"
    parser = ConfigParser(ConfigParser.load_config_files([base / "train.json", base / "paper.json"]))
    parser.update({"device": "$torch.device('cpu')", **overrides})
    return parser


def test_autoencoder_paper_profile_builds_sd_vae(tiny: types.SimpleNamespace, inputs: types.SimpleNamespace,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    parser = _paper("autoencoder", sd_path=str(tiny.root))
    network = parser.get_parsed_content("network").eval()
    assert "autoencoder memory estimate" in capsys.readouterr().out
    ref = vae_outputs(None, inputs.image.repeat(1, 3, 1, 1), inputs.latent, tiny.vae)
    assert equivalent(vae_outputs(network, inputs.image, inputs.latent), [*ref[:2], ref[2].mean(1, keepdim=True)])
    parts = parser.get_parsed_content("architecture").parts
    assert parts["network"]["_target_"].endswith("LDMAutoencoderKL") and parts["network"]["in_channels"] == 1
    random = _paper("autoencoder").get_parsed_content("architecture").parts["network"]
    assert random["_target_"].startswith("monai.networks.nets.") and random["_target_"].endswith(".AutoencoderKL")
    assert random["use_checkpoint"] is False


def test_ldm_paper_profile_builds_sd_unet_and_clip(tiny: types.SimpleNamespace, tmp_path: Path,
                                                   inputs: types.SimpleNamespace) -> None:
    arch = sd.autoencoder_arch(tiny.root, like={"in_channels": 1, "out_channels": 1})
    ae_ckpt = described.save_network(sd.load_autoencoder_weights(described.build(arch), tiny.root),
                                     described.ArchitectureRecord("autoencoder", {"image_size": 64}, network=arch),
                                     tmp_path / "autoencoder.pt")
    parser = _paper("ldm", sd_path=str(tiny.root), autoencoder_ckpt=str(ae_ckpt))
    model = parser.get_parsed_content("network_def").eval()
    assert parser.get_parsed_content("text_encoder").dim == CONTEXT
    assert equivalent(*unet_pair(model.unet, tiny.unet, inputs))
    assert model.unet.conv_in.conv.weight.shape[1] == 4
    parts = parser.get_parsed_content("architecture").parts
    assert parts["network"]["unet"]["use_flash_attention"] is True
    assert parts["text_encoder"]["_target_"] == "busmonai.networks.text_encoders.CLIPTextEncoder"
    assert Path(parts["text_encoder"]["path"]).is_absolute()
    assert parser.get_parsed_content("warmup_steps") == 500 * parser.get_parsed_content("gradient_accumulation")
    wrong = _paper("ldm", sd_path=str(tiny.root), autoencoder_ckpt=str(ae_ckpt), text_encoder_arch=vocab_text_encoder(48))
    with pytest.raises(Exception) as error:
        wrong.get_parsed_content("network_def")
    assert "cross_attention_dim" in str(find_input_error(error.value))


# ------------------------------------------------------------------ trainer: accumulation and bf16
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return x * self.w


def _trainer(accumulation: int, amp: bool = False) -> tuple[object, list[int]]:
    from busmonai.engines.diffusion import DiffusionTrainer
    from busmonai.engines.ema import ema_model

    net = _Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    steps: list[int] = []
    step = optimizer.step
    optimizer.step = lambda *a, **k: (steps.append(1), step(*a, **k))[1]  # type: ignore[method-assign]
    batch = {"latent": torch.randn(2, 2, 4, 4), "prompt": ["a", "b"]}
    trainer = DiffusionTrainer(device="cpu", max_epochs=1, train_data_loader=[batch] * 6, network=net,
                               optimizer=optimizer, noise_scheduler=DDPMScheduler(num_train_timesteps=10),
                               context_fn=lambda prompts: torch.zeros(len(prompts), 1, 4), condition_dropout=0.0,
                               ema=ema_model(net), accumulation_steps=accumulation, amp=amp)
    return trainer, steps


@pytest.mark.parametrize("accumulation", [1, 3])
def test_gradient_accumulation_steps_every_n_iterations(accumulation: int) -> None:
    trainer, steps = _trainer(accumulation)
    trainer.run()  # type: ignore[attr-defined]
    assert len(steps) == 6 // accumulation and int(trainer.ema.n_averaged) == 6 // accumulation  # type: ignore[attr-defined]


def test_accumulation_outside_run() -> None:
    """``train_step`` (the benchmarks' entry) counts the window itself: one step per three calls."""
    trainer, steps = _trainer(3)
    batch = {"latent": torch.randn(2, 2, 4, 4), "prompt": ["a", "b"]}
    for _ in range(6):
        trainer.train_step(batch)  # type: ignore[attr-defined]
    assert len(steps) == 2


def test_amp_is_bf16_autocast() -> None:
    trainer, steps = _trainer(1, amp=True)
    assert trainer.autocast_dtype is torch.bfloat16  # type: ignore[attr-defined]
    trainer.run()  # type: ignore[attr-defined]
    assert len(steps) == 6 and torch.isfinite(torch.tensor(trainer.state.output["loss"]))  # type: ignore[attr-defined]
    assert _trainer(1)[0].autocast_dtype is None  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="accumulation_steps"):
        _trainer(0)


def test_memory_estimate_counts_weights_gradients_moments_and_ema() -> None:
    trainable, frozen = nn.Linear(10, 10), nn.Linear(10, 10).requires_grad_(False)
    estimate = sd.memory_estimate(trainable, [frozen, trainable])
    gib = 1024.0 ** 3
    assert estimate["weights"] * gib == pytest.approx(2 * 110 * 4)  # shared modules once
    assert estimate["gradients"] * gib == pytest.approx(440) and estimate["optimizer"] * gib == pytest.approx(880)
    assert estimate["ema"] * gib == pytest.approx(440) and estimate["trainable_parameters"] == 110



def test_paper_profile_trains_each_stage_from_the_sd_folder(tiny: types.SimpleNamespace, datalist32: Path,
                                                            tmp_path: Path) -> None:
    """One short run of each stage of the paper profile on the CPU, started from the converted tiny
    SD weights: the autoencoder, then the LDM on it, then the ControlNet on the LDM."""
    from bundle_runner import run_bundle

    common = {"datalist": str(datalist32), "image_size": 32, "batch_size": 4, "max_epochs": 1, "num_workers": 0,
              "device": "$torch.device('cpu')", "sd_path": str(tiny.root), "preview_interval": 10_000,
              "resume": False}
    runs = tmp_path / "runs"
    run_bundle(["bundles/autoencoder/configs/train.json", "bundles/autoencoder/configs/paper.json"],
               output_dir=str(runs / "autoencoder"), val_interval=10_000, **common)
    ae = described.load_network(runs / "autoencoder" / "model.pt", "autoencoder_ckpt", "autoencoder")
    assert type(ae).__name__ == "LDMAutoencoderKL"
    chained = {**common, "autoencoder_ckpt": str(runs / "autoencoder" / "model.pt"), "gradient_accumulation": 2}
    run_bundle(["bundles/ldm/configs/train.json", "bundles/ldm/configs/paper.json"], output_dir=str(runs / "ldm"),
               **chained)
    ldm = described.load_network(runs / "ldm" / "model.pt", "ldm_ckpt", "ldm")
    assert ldm.unet.conv_in.conv.weight.shape[1] == tiny.unet.config.in_channels
    run_bundle(["bundles/controlnet/configs/train.json", "bundles/controlnet/configs/paper.json"],
               output_dir=str(runs / "controlnet"), ldm_ckpt=str(runs / "ldm" / "model.pt"),
               control_embedding_channels=[8, 16, 16], **chained)  # masks to the tiny VAE's 4x latent
    assert (runs / "controlnet" / "model.pt").is_file()
    for stage in ("autoencoder", "ldm", "controlnet"):
        assert json.loads((runs / stage / "metrics.json").read_text())["iterations"] >= 1


def test_gradient_checkpointing_keeps_outputs_and_gradients(inputs: types.SimpleNamespace,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks recompute in the backward pass: the same noise prediction and gradients."""
    import torch.utils.checkpoint as torch_checkpoint
    from monai.networks.nets import DiffusionModelUNet

    calls = []
    original = torch_checkpoint.checkpoint
    monkeypatch.setattr(torch_checkpoint, "checkpoint", lambda *a, **k: (calls.append(1), original(*a, **k))[1])

    from busmonai.networks.latent_diffusion import LatentDiffusionModel

    def run(checkpointing: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        unet = DiffusionModelUNet(spatial_dims=2, in_channels=4, out_channels=4, channels=(8, 16), attention_levels=(
            False, True), num_res_blocks=1, num_head_channels=8, norm_num_groups=4, with_conditioning=True,
            cross_attention_dim=CONTEXT)
        model = LatentDiffusionModel(unet, gradient_checkpointing=checkpointing)
        out = model(inputs.latent, timesteps=inputs.timesteps, context=inputs.context)
        out.square().mean().backward()
        return out.detach(), unet.conv_in.conv.weight.grad.clone()

    (plain, grad), (recomputed, grad_ckpt) = run(False), run(True)
    assert calls  # the blocks did go through torch.utils.checkpoint
    assert torch.allclose(plain, recomputed, atol=1e-6) and torch.allclose(grad, grad_ckpt, atol=1e-6)
    parser = _paper("ldm", gradient_checkpointing=True)
    assert parser.get_parsed_content("network_arch#gradient_checkpointing") is True
