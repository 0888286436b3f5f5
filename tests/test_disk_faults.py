"""Every command against a real full disk and a real read-only file system (small tmpfs mounts).

Mounting needs root (or CAP_SYS_ADMIN); where the machine refuses, the tests skip with the reason.
The full disk is a tmpfs filled to the last byte before the command runs; the read-only one is
mounted ``ro``, which refuses root too (unlike a folder without write permission).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bundle_runner import TINY_AUTOENCODER, TINY_UNET
from busmonai.cli import main

_FILLER = "filler"


def _mount(target: Path, options: str) -> str | None:
    """Mount a tmpfs at ``target``; the reason it failed, or None."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return None if run.returncode == 0 else (run.stderr.strip() or f"mount exited {run.returncode}")


def _fill(disk: Path) -> None:
    """Write a file until the tmpfs has no byte left."""
    handle = os.open(disk / _FILLER, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(handle, b"\0" * 512)
    except OSError as err:
        assert err.errno == errno.ENOSPC, err
    finally:
        os.close(handle)
    with pytest.raises(OSError):  # really full: not one more page
        (disk / "probe").write_bytes(b"\0" * 4096)
    (disk / "probe").unlink(missing_ok=True)


@pytest.fixture(params=["full", "read-only"])
def bad_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """``(folder, message)``: a mounted tmpfs that is full or read-only, and the system's message."""
    disk = tmp_path / "disk"
    reason = _mount(disk, "size=64k" if request.param == "full" else "ro,size=64k")
    if reason is not None:
        pytest.skip(f"cannot mount a tmpfs here ({reason})")
    try:
        if request.param == "full":
            _fill(disk)
        yield disk, "No space left on device" if request.param == "full" else "Read-only file system"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def _commands(phantom_source: Path, datalist32: Path, trained_autoencoder: Path, trained_ldm: Path,
              trained_segmenter: Path) -> dict[str, Callable[[Path], list[str]]]:
    """Each command with its output inside ``disk``."""
    tiny = [arg for key, value in {**TINY_AUTOENCODER, **TINY_UNET}.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    return {
        "phantom": lambda disk: ["phantom", "--out", str(disk / "out"), "--n", "4"],
        "prepare": lambda disk: ["prepare", "busi", "--root", str(phantom_source), "--out", str(disk / "out"),
                                 "--size", "32"],
        "masks": lambda disk: ["masks", "--label", "benign", "--n", "4", "--size", "64", "--out", str(disk / "out")],
        "generate": lambda disk: ["generate", "--out", str(disk / "out"), "--n", "2", "--mode", "text",
                                  "--autoencoder-ckpt", str(trained_autoencoder / "model.pt"),
                                  "--ldm-ckpt", str(trained_ldm / "model.pt"), "--image-size", "32", "--steps", "2",
                                  *tiny],
        "export": lambda disk: ["export", "segmentation", "--run", str(trained_segmenter), "--out", str(disk / "out")],
        "evaluate --json": lambda disk: ["evaluate", "curvature", str(datalist32), "--json", str(disk / "out.json")],
    }


@pytest.mark.parametrize("command", ["phantom", "prepare", "masks", "generate", "export", "evaluate --json"])
def test_a_full_or_read_only_disk_is_exit_2_with_the_path(command: str, bad_disk: tuple[Path, str],
                                                          phantom_source: Path, datalist32: Path,
                                                          trained_autoencoder: Path, trained_ldm: Path,
                                                          trained_segmenter: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    disk, message = bad_disk
    argv = _commands(phantom_source, datalist32, trained_autoencoder, trained_ldm, trained_segmenter)[command](disk)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert err.startswith("error: ") and message in err and str(disk) in err, err
    left = sorted(p.name for p in disk.iterdir())
    if command == "generate" and message.startswith("No space"):
        # generate keeps what it finished so that a rerun resumes: once there is space, it does
        os.remove(disk / _FILLER)
        assert main(argv) == 0 and (disk / "out" / "datalist.json").is_file()
        return
    assert left == ([_FILLER] if message.startswith("No space") else []), left  # no partial output left behind


def test_a_bundle_run_onto_a_read_only_disk_is_one_line_and_exit_2(datalist32: Path, tmp_path: Path) -> None:
    """``python -m monai.bundle run`` with ``output_dir`` on a read-only file system: the system's
    message and the path, exit 2, not MONAI's traceback."""
    import sys

    from bundle_runner import REPO

    disk = tmp_path / "disk"
    reason = _mount(disk, "ro,size=64k")
    if reason is not None:
        pytest.skip(f"cannot mount a tmpfs here ({reason})")
    try:
        run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                              str(REPO / "bundles/autoencoder/configs/train.json"), "--datalist", str(datalist32),
                              "--output_dir", str(disk / "ae"), "--image_size", "32", "--max_epochs", "1"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "Read-only file system" in run.stderr and str(disk) in run.stderr
