"""Locating the repository's MONAI Bundles and running their configs from Python.

Each bundle is self-contained: it refers to its own files through ``@bundle_root`` and to other
stages only through their checkpoints (:mod:`busmonai.networks.described`), so a bundle folder
copied anywhere runs from any working directory. ``bundle_root`` defaults to
:func:`bundle_root`, the folder above the ``configs/`` folder the workflow was started from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def run_config(configs: Sequence[str | Path], run: bool = True, **overrides: Any) -> Any:
    """Initialise (and run) a bundle workflow; returns the workflow.

    Args:
        configs: config files, merged in order (e.g. train.json then paper.json).
        run: execute the ``run`` expressions (False: only ``initialize``, for inspection).
        **overrides: config keys to override, as ``--key value`` would.
    """
    from monai.bundle import ConfigWorkflow

    files = [str(Path(c).resolve()) for c in configs]
    workflow = ConfigWorkflow(config_file=files if len(files) > 1 else files[0], workflow_type=None, **overrides)
    workflow.initialize()
    if run:
        workflow.run()
        workflow.finalize()
    return workflow


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
