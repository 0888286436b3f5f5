"""How much does the mask steer the generator? Adherence per checkpoint and sampling setting.

For the held-out tumor masks of a real datalist, generate one image per mask (with that image's
own prompt and a fixed seed) for every combination of

- checkpoint: the EMA weights (``model.pt``) and the raw weights (``model_raw.pt``) of the stage
  that reads the mask (the ControlNet, or a mask-input LDM),
- ControlNet conditioning scale (a mask-input LDM has none),
- mask guidance weight (text guidance fixed),

segment every image with a segmenter trained on **real images only** (never one a loss used) and
print the Dice with the image's own mask, the Dice with another image's mask (the shuffled-mask
control: the mask's real effect is own minus control), and KID against the real held-out images
for the best setting. Two reference rows: the autoencoder's reconstruction of the real images (what
its decoder makes of real latents: the chain's realism ceiling) and as many real training images
(KID's floor). With ``--masks ellipse`` the masks are elliptic ones that no network has seen (as
many as the held-out tumors, with prompts drawn as ``busmonai generate`` draws them): sampling
settings are chosen on these, and the held-out split only reports. Text-only generation is the
floor: its own-mask Dice is what any lesion prior scores without looking at the mask.

Usage::

    python scripts/generator_diagnostics.py --datalist data/busi64/datalist.json --run runs/chain \
        --segmenter runs/seg_real/model.pt --json diagnostics.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from busmonai.clinical.classes import TUMOR_CLASSES


def load_models(run: Path, device: str) -> dict[str, Any]:
    """The chain's networks from ``run/<stage>/model*.pt`` (self-describing checkpoints)."""
    from busmonai.networks.described import build_part, load_network
    from busmonai.pipeline import product_path

    ae = load_network(product_path(run, "autoencoder"), "autoencoder_ckpt", "autoencoder").to(device).eval()
    ldm_path = product_path(run, "ldm")
    ldms = {"ema": load_network(ldm_path, "ldm_ckpt", "ldm").to(device).eval()}
    if (run / "ldm" / "model_raw.pt").is_file():
        ldms["raw"] = load_network(run / "ldm" / "model_raw.pt", "ldm_ckpt", "ldm").to(device).eval()
    text = ldms["ema"].text_encoder or build_part(ldm_path, "ldm_ckpt", "ldm", "text_encoder").to(device)
    controlnets = {}
    for name, file in (("ema", "model.pt"), ("raw", "model_raw.pt")):
        path = run / "controlnet" / file
        if path.is_file():
            controlnets[name] = load_network(path, "controlnet_ckpt", "controlnet").to(device).eval()
    scheduler = build_part(ldm_path, "ldm_ckpt", "ldm", "noise_scheduler")
    return {"autoencoder": ae, "ldms": ldms, "text_encoder": text, "controlnets": controlnets,
            "scheduler": scheduler, "mask_input": bool(ldms["ema"].mask_channels)}


def ellipse_items(datalist: Path, n: int, image_size: int, seed: int = 1) -> dict[str, Any]:
    """``n`` elliptic masks (the ellipse prior fitted on the training masks; half benign, half
    malignant) with prompts drawn like ``busmonai generate`` draws them: masks no network has seen
    and no test data, to choose sampling settings on. ``images`` is None (no real image has them)."""
    from busmonai.synthesis.generate import GenerationSettings, make_plan

    entries, masks = make_plan(GenerationSettings(n=n, mask_source="ellipse", datalist=str(datalist),
                                                  image_size=image_size, seed=seed))
    return {"images": None, "masks": torch.stack([torch.from_numpy(m > 0).float()[None] for m in masks]),
            "prompts": [e["prompt"] for e in entries], "classes": [e["class"] for e in entries]}


def test_items(datalist: Path, split: str, image_size: int, limit: int | None, spread: bool = True) -> dict[str, Any]:
    """Real tumor images of ``split``, their masks and prompts: all, or ``limit`` of them (evenly
    spaced with ``spread``, so that both classes of a class-sorted split are in; else the first)."""
    from busmonai.data.dataset import LoadPNGd, datalist_split

    items = datalist_split(datalist, split, TUMOR_CLASSES, image_size,
                           keys=("image", "mask", "prompt", "class"))
    if spread and limit is not None and len(items) > limit:
        items = [items[round(k * (len(items) - 1) / (limit - 1))] for k in range(limit)]
    items = items[:limit]
    load = LoadPNGd(keys=("image", "mask"), image_size=image_size)
    loaded = [load(dict(item)) for item in items]
    return {"images": torch.stack([x["image"] for x in loaded]), "masks": torch.stack([x["mask"] for x in loaded]),
            "prompts": [i["prompt"] for i in items], "classes": [i["class"] for i in items]}


@torch.no_grad()
def generate(models: dict[str, Any], ldm: torch.nn.Module, controlnet: torch.nn.Module | None, data: dict[str, Any],
             steps: int, guidance: float, mask_guidance: float | None, scale: float, use_mask: bool,
             batch_size: int, device: str, seed: int = 0) -> torch.Tensor:
    """One image per test mask, in [0, 1], (N, 1, H, W)."""
    from busmonai.synthesis.sampling import ddim_sample, decode, encode_context, make_ddim, seeded_noise

    shape = models["autoencoder"].encode(data["masks"][:1].to(device))[0].shape[1:]
    out = []
    for start in range(0, len(data["prompts"]), batch_size):
        prompts = data["prompts"][start:start + batch_size]
        masks = data["masks"][start:start + batch_size].to(device)
        noise = seeded_noise(shape, [seed + start + k for k in range(len(prompts))], device)
        context = encode_context(ldm, models["text_encoder"], prompts, device)
        latents = ddim_sample(ldm, make_ddim(models["scheduler"], steps=steps), noise, context, guidance=guidance,
                              controlnet=controlnet if use_mask else None, control=masks if use_mask else None,
                              conditioning_scale=scale, mask_guidance=mask_guidance if use_mask else None)
        out.append(decode(models["autoencoder"], latents, ldm.scale_factor).cpu())
    return torch.cat(out)


def score(images: torch.Tensor, masks: torch.Tensor, segmenter: Any, classes: list[str] | None = None,
          classifier: Any = None) -> dict[str, float]:
    """Own-mask Dice, shuffled-mask Dice (image k against mask k+1) and their difference; with a
    ``classifier``, label fidelity: its AUC on the images' intended classes."""
    from busmonai.metrics.adherence import mask_control_effect
    from busmonai.metrics.fidelity import label_fidelity

    result = mask_control_effect(images[:, 0].numpy(), masks[:, 0].numpy() > 0.5, segmenter)
    if classifier is not None and classes is not None:
        result["fidelity_auc"] = label_fidelity(images[:, 0].numpy(), [int(c == "malignant") for c in classes],
                                                classifier)["auc"]
    return result


def kid(real: torch.Tensor, fake: torch.Tensor) -> float:
    from busmonai.metrics.fid import kid_of_images

    return kid_of_images(real[:, 0].numpy(), fake[:, 0].numpy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", type=Path, required=True, help="real datalist (its held-out split is used)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--run", type=Path, required=True, help="folder with autoencoder/, ldm/ and controlnet/ runs")
    parser.add_argument("--segmenter", type=Path, required=True, help="segmentation model.pt trained on real images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="at most this many test masks")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0, help="text guidance (fixed)")
    parser.add_argument("--mask-guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--classifier", type=Path, default=None,
                        help="classification model.pt trained on real images: adds label fidelity (AUC) per row")
    parser.add_argument("--masks", choices=("split", "ellipse"), default="split",
                        help="score on the real masks of --split, or on as many elliptic masks that no network saw "
                             "(choose sampling settings on these: the test split only reports)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = "cpu"
    from busmonai.metrics.sources import probability_fn
    from busmonai.networks.described import load_network

    segmenter = probability_fn(load_network(args.segmenter, "segmenter", "segmentation").eval(), "softmax")
    classifier = None if args.classifier is None else probability_fn(
        load_network(args.classifier, "classifier", "classification").eval(), "auto")
    models = load_models(args.run, device)
    real = test_items(args.datalist, args.split, args.image_size, args.limit)
    rows: list[dict[str, Any]] = [{"checkpoint": f"real {args.split} images", "kid": None,
                                   **score(real["images"], real["masks"], segmenter, real["classes"], classifier)}]
    with torch.no_grad():  # the realism ceiling: the autoencoder's own reconstruction of the real images
        reconstructed = models["autoencoder"].decode(models["autoencoder"].encode(real["images"].to(device))[0])
    reconstructed = reconstructed.clamp(0, 1).cpu()
    rows.append({"checkpoint": "autoencoder reconstruction", **score(reconstructed, real["masks"], segmenter,
                                                                     real["classes"], classifier),
                 "kid": kid(real["images"], reconstructed)})
    training = test_items(args.datalist, "training", args.image_size, len(real["prompts"]))  # the KID floor
    rows.append({"checkpoint": "real training images", **score(training["images"], training["masks"], segmenter,
                                                              training["classes"], classifier),
                 "kid": kid(real["images"], training["images"])})
    data = real if args.masks == "split" else ellipse_items(args.datalist, len(real["prompts"]), args.image_size)
    stage = models["ldms"] if models["mask_input"] else models["controlnets"]
    scales = [1.0] if models["mask_input"] else args.scales
    best: tuple[float, torch.Tensor | None, dict[str, Any] | None] = (-1.0, None, None)
    start = time.perf_counter()
    text_images = generate(models, models["ldms"]["ema"], None, data, args.steps, args.guidance, None, 1.0, False,
                           args.batch_size, device)
    rows.append({"checkpoint": "ema", "mode": "text only", **score(text_images, data["masks"], segmenter, data["classes"], classifier),
                 "kid": kid(real["images"], text_images)})
    for name, module in stage.items():
        ldm = module if models["mask_input"] else models["ldms"]["ema"]
        controlnet = None if models["mask_input"] else module
        for scale in scales:
            for weight in args.mask_guidance:
                images = generate(models, ldm, controlnet, data, args.steps, args.guidance, weight, scale, True,
                                  args.batch_size, device)
                row = {"checkpoint": name, "mode": "full", "conditioning_scale": scale, "mask_guidance": weight,
                       **score(images, data["masks"], segmenter, data["classes"], classifier), "kid": None}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "per_image"}), flush=True)
                if row["effect"] > best[0]:
                    best = (row["effect"], images, row)
        # mask only (no prompt), at the default settings
        images = generate(models, ldm, controlnet, {**data, "prompts": [""] * len(data["prompts"])}, args.steps, 1.0,
                          args.guidance, 1.0, True, args.batch_size, device)
        rows.append({"checkpoint": name, "mode": "mask only", "conditioning_scale": 1.0,
                     "mask_guidance": args.guidance, **score(images, data["masks"], segmenter), "kid": None})
    if best[2] is not None:
        best[2]["kid"] = kid(real["images"], best[1])
    seconds = time.perf_counter() - start
    kind = "held-out tumor" if args.masks == "split" else "elliptic"
    print(f"\n{len(data['prompts'])} {kind} masks, {args.steps} DDIM steps, text guidance {args.guidance}, "
          f"segmenter {args.segmenter} (trained on real images), {seconds:.0f} s")
    print("\n| checkpoint | mode | scale | mask guidance | own-mask Dice | shuffled-mask Dice | effect | KID | label AUC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kid_text = f"{r['kid']:.4f}" if r.get("kid") is not None else ""
        auc_text = f"{r['fidelity_auc']:.3f}" if "fidelity_auc" in r else ""
        print(f"| {r['checkpoint']} | {r.get('mode', '')} | {r.get('conditioning_scale', '')} | "
              f"{r.get('mask_guidance', '')} | {r['own']:.3f} | {r['shuffled']:.3f} | {r['effect']:+.3f} | {kid_text} | "
              f"{auc_text} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "seconds": seconds, "n": len(data["prompts"]),
                                         "settings": vars(args) | {"datalist": str(args.datalist),
                                                                   "run": str(args.run),
                                                                   "segmenter": str(args.segmenter),
                                                                   "json": str(args.json)}},
                                        indent=1, default=str) + "\n")
    return 0
