"""Every network argument a bundle config declares reaches the network it builds.

For each bundle's network description (``network_arch``, ``unet_arch``, ``generator_def`` and the
segmenters' override files), each argument is changed in turn and the network is built again: the
built module must differ (its ``repr`` holds the layer sizes, dropout rates, residual units and
attention blocks). A factory that drops an argument (a UNet built with ``num_res_units=0``
whatever the config says) fails here."""

from __future__ import annotations

from typing import Any

import pytest
from monai.bundle import ConfigParser

from bundle_runner import REPO

FIXED = {"spatial_dims", "_target_", "_mode_", "in_channels", "with_conditioning", "cross_attention_dim",
         "image_size", "start_size", "pretrained_weights", "path", "options", "model_dir"}
"""Arguments not perturbed: the data's own shape, and paths."""
CASES = [
    # (config files, description key, settings that keep the build cheap and free of checkpoints)
    (["autoencoder/configs/train.json"], "network_arch", {}),
    (["ldm/configs/train.json"], "unet_arch", {"latent_channels": 4, "unet_arch#cross_attention_dim": 16}),
    (["ldm/configs/train.json"], "minilm_text_encoder_arch", {}),
    (["segmentation/configs/train.json"], "network_arch", {}),
    (["segmentation/configs/train.json", "segmentation/configs/resunet.json"], "network_arch", {}),
    (["segmentation/configs/train.json", "segmentation/configs/attention_unet.json"], "network_arch", {}),
    (["segmentation/configs/train.json", "segmentation/configs/unetplusplus.json"], "network_arch", {}),
    (["classification/configs/train.json"], "network_arch", {"network_name": "test_efficientnet"}),
    (["scmg/configs/train.json"], "generator_def", {}),
]


def _changed(name: str, value: Any) -> Any:
    """Another valid value of an argument."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return max(1, value // 2) if "groups" in name else value + 1
    if isinstance(value, float):
        return value + 0.25 if value < 0.5 else value / 2
    if isinstance(value, str):
        return {"efficientnet_b0": "resnet18", "test_efficientnet": "resnet18"}.get(value, value + "_x")
    if isinstance(value, (list, tuple)) and value:
        last = value[-1]
        if isinstance(last, bool):
            return [*value[:-1], not last]
        if isinstance(last, int):
            return [*value[:-1], last * 2]
    raise AssertionError(f"no rule to change {name}={value!r}")


def _signature(module: Any) -> str:
    """``repr`` of the module (layers and their sizes) plus every module's plain settings and scalar
    buffers (a drop rate or a blur width that ``repr`` does not print)."""
    plain = (bool, int, float, str, tuple, list)
    settings = [(name, sorted((k, repr(v)) for k, v in vars(m).items() if not k.startswith("_") and isinstance(v, plain)))
                for name, m in module.named_modules()]
    scalars = [(name, float(b)) for name, b in module.named_buffers() if b.numel() == 1]
    return repr(module) + repr(settings) + repr(scalars)


def _build(files: list[str], key: str, settings: dict[str, Any]) -> Any:
    from busmonai.networks.described import build

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / f) for f in files])
    parser.update(settings)
    built = parser.get_parsed_content(key)
    return build(built) if callable(built) and not hasattr(built, "parameters") else built


@pytest.mark.parametrize(("files", "key", "settings"), CASES, ids=[" + ".join(c[0]) for c in CASES])
def test_every_declared_argument_changes_the_network(files: list[str], key: str, settings: dict[str, Any]) -> None:
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / f) for f in files])
    parser.update(settings)
    raw = parser.get(key)
    baseline = _signature(_build(files, key, settings))
    checked = []
    for name, value in raw.items():
        if name in FIXED or f"{key}#{name}" in settings:
            continue
        resolved = parser.get_parsed_content(f"{key}#{name}")
        if resolved is None:
            continue
        if name == "channels" or name.endswith("channels") and isinstance(resolved, list):
            target = value[1:] if isinstance(value, str) and value.startswith("@") else None
            override = {target: _changed(name, resolved)} if target else {f"{key}#{name}": _changed(name, resolved)}
        elif isinstance(value, str) and value.startswith("@"):
            override = {value[1:]: _changed(name, resolved)}
        else:
            override = {f"{key}#{name}": _changed(name, resolved)}
        assert _signature(_build(files, key, {**settings, **override})) != baseline, f"{name} does not reach the network"
        checked.append(name)
    assert checked, f"nothing checked for {files} {key}"
