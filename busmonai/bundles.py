"""Locating the repository's MONAI Bundles and running their configs from Python.

Each bundle is self-contained: it refers to its own files through ``@bundle_root`` and to other
stages only through their checkpoints (:mod:`busmonai.networks.described`), so a bundle folder
copied anywhere runs from any working directory. ``bundle_root`` defaults to
:func:`bundle_root`, the folder above the ``configs/`` folder the workflow was started from.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from busmonai.errors import BusmonaiInputError

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"


def bundle_config(stage: str, name: str = "train.json") -> Path:
    """Path of ``bundles/<stage>/configs/<name>``.

    Raises:
        BusmonaiInputError: the bundles folder is not beside the package (install with
            ``pip install -e .`` from a clone) or the config does not exist.
    """
    path = BUNDLES_DIR / stage / "configs" / name
    if not path.is_file():
        raise BusmonaiInputError(
            f"{path}: bundle config not found; busmonai's bundles live in the repository, so install it "
            "from a clone with 'pip install -e .'"
        )
    return path


def bundle_root(fallback: str | Path = ".") -> str:
    """The folder of the bundle whose config is being run (the parent of its ``configs/``).

    ``python -m monai.bundle run --config_file X/configs/inference.json`` and MONAI's
    ``ConfigWorkflow`` know the config folder but do not set ``bundle_root``; this finds the
    running workflow on the call stack and returns ``X`` as an absolute path. Tools that set
    ``bundle_root`` themselves (MONAI Label, MONAI Deploy, ``--bundle_root DIR``) override it.

    Args:
        fallback: returned when no workflow is running (a bare ``ConfigParser``).
    """
    import inspect

    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    try:
        while frame is not None:
            workflow = frame.f_locals.get("self")
            if isinstance(workflow, ConfigWorkflow):
                root = Path(workflow.config_root_path).resolve()
                return str(root.parent if root.name == "configs" else root)
            frame = frame.f_back
    finally:
        del frame
    return str(Path(fallback).resolve())


def run_config(configs: Sequence[str | Path], run: bool = True, log_file: str | Path | None = None,
               trainer_handlers: Sequence[Any] = (), **overrides: Any) -> Any:
    """Initialise (and run) a bundle workflow; returns the workflow.

    Args:
        configs: config files, merged in order (e.g. train.json then paper.json).
        run: execute the ``run`` expressions (False: only ``initialize``, for inspection).
        log_file: send the workflow's log (the bundle's ``logging.conf`` prints it) to this file
            instead of the terminal, while it runs.
        trainer_handlers: handlers with ``attach(engine)`` to attach to ``train#trainer`` before it
            runs (e.g. :class:`busmonai.engines.handlers.StageProgress`).
        **overrides: config keys to override, as ``--key value`` would.
    """
    from monai.bundle import ConfigWorkflow

    files = [str(Path(c).resolve()) for c in configs]
    with _log_to(log_file) as redirect:
        workflow = ConfigWorkflow(config_file=files if len(files) > 1 else files[0], workflow_type=None, **overrides)
        redirect()  # the bundle's logging.conf has just given the root logger a console handler again
        workflow.initialize()
        if trainer_handlers:
            trainer = workflow.parser.get_parsed_content("train#trainer")
            redirect()  # the loggers that parsing the handlers created (MONAI's StatsHandler makes its own)
            for handler in trainer_handlers:
                handler.attach(trainer)
        if run:
            workflow.run()
            workflow.finalize()
    return workflow


@contextmanager
def _log_to(path: str | Path | None) -> Iterator[Callable[[], None]]:
    """Send what the loggers print on the terminal to ``path`` (appending) for the block.

    Yields a function that redirects loggers created since (call it after parsing a config's
    handlers); every redirected logger gets back the terminal handlers it had last. Nothing changes
    for ``path`` None.
    """
    if path is None:
        yield lambda: None
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    moved: dict[logging.Logger, list[logging.Handler]] = {}  # the latest terminal handlers of each

    def redirect() -> None:
        loggers = [logging.getLogger(), *(v for v in logging.root.manager.loggerDict.values()
                                          if isinstance(v, logging.Logger))]
        for logger in loggers:
            # plain stream handlers print on the terminal (file handlers are subclasses, kept);
            # some hold a stdout object that has since been replaced, so streams are not compared
            console = [h for h in logger.handlers if type(h) is logging.StreamHandler]
            if console:
                moved[logger] = console
                logger.handlers = [h for h in logger.handlers if h not in console] + [file_handler]

    redirect()
    try:
        yield redirect
    finally:
        for logger, console in moved.items():
            logger.handlers = [h for h in logger.handlers if h is not file_handler] + console
        file_handler.close()


_PEAK_MARK = "BUSMONAI_PEAK_RSS_KB="
_CHILD = (
    "import atexit, resource, runpy, sys\n"
    "atexit.register(lambda: sys.stderr.write('" + _PEAK_MARK + "%d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
    "sys.argv = ['monai.bundle'] + sys.argv[1:]\n"
    "runpy.run_module('monai.bundle', run_name='__main__')\n"
)


def run_bundle_process(configs: Sequence[str | Path], overrides: dict[str, Any]) -> dict[str, float]:
    """``python -m monai.bundle run`` in a child process (in the current working directory).

    Returns:
        ``{"seconds": wall time, "peak_rss_mb": the child's own peak resident memory}``.

    Raises:
        RuntimeError: the bundle failed (with the end of its stderr).
    """
    import json
    import subprocess
    import sys
    import time

    files = [str(Path(c).resolve()) for c in configs]
    args = ["run", "--config_file", files[0] if len(files) == 1 else json.dumps(files)]
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _CHILD, *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"bundle {files} failed:\n{run.stderr[-3000:]}")
    peaks = [int(line[len(_PEAK_MARK):]) for line in run.stderr.splitlines() if line.startswith(_PEAK_MARK)]
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peaks[-1] / 1024, 1) if peaks else float("nan")}


STAGES: tuple[str, ...] = ("autoencoder", "ldm", "controlnet", "lora", "scmg", "segmentation", "classification")
TORCHSCRIPT_STAGES: tuple[str, ...] = ("segmentation", "classification")
_RELEASE_FILES: tuple[str, ...] = ("configs", "docs", "LICENSE")


def export_bundle(stage: str, run_dir: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Assemble a release bundle from a training run: the bundle's configs, docs and licence, the
    run's ``model.pt`` as ``models/model.pt`` and, for the classification and segmentation
    bundles, ``models/model.ts`` (TorchScript via MONAI's ``ckpt_export``, carrying
    ``metadata.json`` and ``inference.json`` for MONAI Deploy).

    The exported bundle's ``inference.json`` reads its own weights from
    ``@bundle_root/models/model.pt``, so the folder runs wherever it is copied.

    Args:
        stage: one of :data:`STAGES`.
        run_dir: the stage's ``output_dir`` (holding ``model.pt``).
        out: the new bundle folder; it must not exist unless ``overwrite``.
        overwrite: replace an existing folder that holds a bundle (``configs/metadata.json``).

    Returns:
        ``{"bundle": out, "files": [...]}``.

    Raises:
        BusmonaiInputError: unknown stage, no ``model.pt`` of that stage in ``run_dir``, or an
            ``out`` that exists (and is not a bundle, or ``overwrite`` is off).
    """
    import json
    import shutil
    import warnings

    from busmonai.files import atomic_directory
    from busmonai.networks.described import read_record

    if stage not in STAGES:
        raise BusmonaiInputError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    out = Path(out)
    checkpoint = Path(run_dir) / ("adapter.safetensors" if stage == "lora" else "model.pt")
    if stage == "scmg":
        from busmonai.synthesis.masks import load_generator

        load_generator(checkpoint, "run")  # refuses another stage's checkpoint
    elif stage != "lora":
        read_record(checkpoint, "run", stage)
    elif not checkpoint.is_file():
        raise BusmonaiInputError(f"{checkpoint}: no LoRA adapter in --run; train bundles/lora first")
    if out.exists():
        if not overwrite:
            raise BusmonaiInputError(f"{out}: already exists; choose a new --out or pass --overwrite")
        if not (out / "configs" / "metadata.json").is_file():
            raise BusmonaiInputError(f"{out}: exists and is not a bundle folder; refusing to replace it")
    source = BUNDLES_DIR / stage
    with atomic_directory(out, replace=overwrite) as tmp:
        for name in _RELEASE_FILES:
            target = tmp / name
            if (source / name).is_dir():
                shutil.copytree(source / name, target)
            else:
                shutil.copy2(source / name, target)
        models = tmp / "models"
        models.mkdir()
        shutil.copy2(checkpoint, models / checkpoint.name)
        inference = tmp / "configs" / "inference.json"
        config = json.loads(inference.read_text())
        own_key = {"lora": "lora_adapter"}.get(stage, f"{stage}_ckpt")
        if own_key in config:
            config[own_key] = f"$@bundle_root + '/models/{checkpoint.name}'"
        size = read_record(checkpoint, "run", stage)[0].get("settings", {}).get("image_size") \
            if stage not in ("lora", "scmg") else None
        if size is not None:  # the size the weights were trained at, not the config's default
            config["image_size"] = size
            _set_spatial_shape(tmp / "configs" / "metadata.json", int(size))
        inference.write_text(json.dumps(config, indent=4) + "\n")
        if stage in TORCHSCRIPT_STAGES:
            from monai.bundle import ckpt_export

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)  # TorchScript deprecation
                ckpt_export("network_def", filepath=str(models / "model.ts"), ckpt_file=str(models / "model.pt"),
                            meta_file=str(tmp / "configs" / "metadata.json"), config_file=str(inference),
                            key_in_ckpt="model", bundle_root=str(tmp))
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return {"bundle": str(out), "files": files}


def _set_spatial_shape(metadata: Path, size: int) -> None:
    """Write the trained image size into the ``image`` input and ``pred`` output of image-sized
    networks in a bundle's ``metadata.json``."""
    import json

    meta = json.loads(metadata.read_text())
    formats = meta.get("network_data_format", {})
    for group, name in (("inputs", "image"), ("outputs", "pred")):
        entry = formats.get(group, {}).get(name)
        if entry and len(entry.get("spatial_shape", [])) == 2 and entry.get("type") == "image":
            entry["spatial_shape"] = [size, size]
    metadata.write_text(json.dumps(meta, indent=4) + "\n")


def _is_self_describing(path: Path) -> bool:
    """True for a ``torch.save``d dict with an architecture record (not TorchScript, not a bare state dict)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:  # TorchScript archives hold code/; checkpoints do not
            if any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist()):
                return False
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - other files are not checkpoints
        return False
    return isinstance(data, dict) and isinstance(data.get("arch"), dict)


def load_bundle_network(
    checkpoint: Path | str, config: Path | str | None = None, key: str = "classifier"
) -> torch.nn.Module:
    """Load a downstream network for evaluation (``busmonai evaluate``), in eval mode on the CPU.

    Args:
        checkpoint: a bundle's self-describing ``model.pt`` (weights and architecture record:
            no config needed), a TorchScript file (the bundles' ``ckpt_export`` output), or, with
            ``config``, a ``torch.save``d state dict (optionally under a ``model`` entry).
        config: the bundle config (JSON or YAML) whose ``network_def`` builds the network.
        key: the CLI option that named the checkpoint (``classifier`` or ``segmenter``), used
            in error messages.

    Raises:
        BusmonaiInputError: missing file, a file that is not TorchScript (without ``config``),
            a config without ``network_def``, or weights that do not fit it.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise BusmonaiInputError(
            f"{checkpoint}: {key} checkpoint not found; train and export the {key} bundle first "
            f"or pass an existing file with --{key}"
        )
    if config is None and _is_self_describing(checkpoint):
        from busmonai.networks.described import load_network as load_described

        stage = str(torch.load(checkpoint, map_location="cpu", weights_only=True)["arch"].get("stage"))
        return load_described(checkpoint, key, stage).eval()
    if config is None:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
                network = torch.jit.load(str(checkpoint), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - torch raises many types for a non-TorchScript file
            raise BusmonaiInputError(
                f"{checkpoint}: not a TorchScript {key} ({type(err).__name__}); pass the file written by the "
                f"bundle's ckpt_export, or a state dict together with --{key}-config CONFIG"
            ) from err
        return network.eval()
    from monai.bundle import ConfigParser

    from busmonai.checkpoint_io import load_weights, read_checkpoint

    config = Path(config)
    if not config.is_file():
        raise BusmonaiInputError(f"{config}: {key} config not found; pass the bundle's configs/train.json")
    parser = ConfigParser()
    try:
        parser.read_config(str(config))
    except Exception as err:  # noqa: BLE001 - JSON / YAML errors
        raise BusmonaiInputError(f"{config}: not a readable bundle config ({err})") from err
    if "network_def" not in parser:
        raise BusmonaiInputError(f"{config}: no 'network_def' key; pass the {key} bundle's configs/train.json")
    network = parser.get_parsed_content("network_def")
    state = read_checkpoint(checkpoint, key)
    entry = "model" if isinstance(state.get("model"), dict) else None
    return load_weights(network, checkpoint, key, entry).eval()
