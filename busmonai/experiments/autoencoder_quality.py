"""How good is an autoencoder for the chain? Reconstruction fidelity and realism, side by side.

For each autoencoder checkpoint, reconstruct the real images of one split and print PSNR, SSIM,
KID of the reconstructions against the real images (the realism ceiling of any generator that
decodes through this autoencoder: a diffusion model can at best produce what the decoder makes of
real latents) and, with ``--classifier``, the label fidelity of the reconstructed tumors (AUC of a
classifier trained on real images). Choose between autoencoders on the ``validation`` split,
which for a datalist without one is the seeded 10 % of training that the autoencoder bundle holds
out itself (``holdout`` 0.1, ``seed`` 0); the test split only reports.

Usage::

    python scripts/autoencoder_quality.py --datalist data/busi64/datalist.json \
        --autoencoder base=runs/ae_base/model.pt adv=runs/ae_adv/model.pt \
        --classifier runs/cls_real/model.pt --json autoencoder_quality.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from busmonai.clinical.classes import IMAGE_CLASSES, TUMOR_CLASSES


def load_split(datalist: Path, split: str, image_size: int) -> dict[str, Any]:
    """The split's images ``(N, 1, H, W)`` in [0, 1] and their class names."""
    from busmonai.data.dataset import LoadPNGd, datalist_split

    items = datalist_split(datalist, split, IMAGE_CLASSES, image_size, holdout=0.1, seed=0,
                           keys=("image", "class"))
    load = LoadPNGd(keys="image", image_size=image_size)
    images = torch.stack([torch.as_tensor(load(dict(item))["image"]) for item in items]).float()
    return {"images": images, "classes": [item["class"] for item in items]}


def quality(autoencoder: torch.nn.Module, data: dict[str, Any], classifier: Any = None,
            batch_size: int = 32) -> dict[str, float]:
    """PSNR, SSIM, KID (reconstruction vs real) and optional label AUC of the reconstructions."""
    from monai.metrics import PSNRMetric, SSIMMetric

    from busmonai.metrics.fid import kid_of_images
    from busmonai.metrics.fidelity import label_fidelity

    images = data["images"]
    with torch.no_grad():
        recon = torch.cat([autoencoder.reconstruct(images[i : i + batch_size]).clamp(0, 1)
                           for i in range(0, len(images), batch_size)])
    row = {
        "psnr": float(PSNRMetric(max_val=1.0)(recon, images).mean()),
        "ssim": float(SSIMMetric(spatial_dims=2, data_range=1.0)(recon, images).mean()),
        "kid": kid_of_images(images[:, 0].numpy(), recon[:, 0].numpy()),
    }
    if classifier is not None:
        tumor = [i for i, c in enumerate(data["classes"]) if c in TUMOR_CLASSES]
        labels = [int(data["classes"][i] == "malignant") for i in tumor]
        row["fidelity_auc_real"] = label_fidelity(images[tumor, 0].numpy(), labels, classifier)["auc"]
        row["fidelity_auc"] = label_fidelity(recon[tumor, 0].numpy(), labels, classifier)["auc"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", type=Path, required=True)
    parser.add_argument("--split", default="validation", help="validation (choose) or test (report)")
    parser.add_argument("--autoencoder", nargs="+", required=True, metavar="NAME=MODEL_PT")
    parser.add_argument("--classifier", type=Path, default=None, help="classification model.pt trained on real images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from busmonai.metrics.sources import probability_fn
    from busmonai.networks.described import load_network

    classifier = None if args.classifier is None else probability_fn(
        load_network(args.classifier, "classifier", "classification").eval(), "auto")
    specs = [spec.partition("=") for spec in args.autoencoder]
    for name, sep, path in specs:
        if not sep:
            parser.error(f"--autoencoder {name!r}: write NAME=MODEL_PT")
    data = load_split(args.datalist, args.split, args.image_size)
    rows = []
    for name, _, path in specs:
        ae = load_network(Path(path), "autoencoder", "autoencoder").eval()
        metrics_file = Path(path).parent / "metrics.json"
        iterations = json.loads(metrics_file.read_text()).get("iterations") if metrics_file.is_file() else None
        rows.append({"autoencoder": name, "path": path, "iterations": iterations, **quality(ae, data, classifier)})
    print(f"{args.split} split, {len(data['images'])} images")
    print("| autoencoder | iterations | PSNR (dB) | SSIM | KID vs real | label AUC (real images) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        auc = f"{r['fidelity_auc']:.3f} ({r['fidelity_auc_real']:.3f})" if "fidelity_auc" in r else ""
        print(f"| {r['autoencoder']} | {r['iterations']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['kid']:.4f} | {auc} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"split": args.split, "n": len(data["images"]), "rows": rows}, indent=1))
    return 0
