"""Bad options, folders that must not be written and disks that refuse: exit codes and messages,
and no file of the user's lost."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from busmonai.cli import main


@pytest.mark.parametrize("argv", [
    ["generate", "--out", "x", "--n", "2", "--guidance", "nan"],
    ["generate", "--out", "x", "--n", "2", "--guidance", "inf"],
    ["generate", "--out", "x", "--n", "2", "--mask-guidance", "-1"],
    ["generate", "--out", "x", "--n", "2", "--steps", "5000"],
    ["generate", "--out", "x", "--ratio", "nan"],
    ["demo", "--minutes", "nan"],
    ["demo", "--minutes", "0"],
    ["prepare", "busi", "--root", "r", "--out", "o", "--size", "100000"],
    ["masks", "--label", "benign", "--n", "0", "--out", "o"],
])
def test_out_of_range_options_exit_2_with_the_range(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "out of range" in err or "is not a" in err, err


def test_demo_refuses_a_missing_data_folder_and_overlapping_folders(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--data", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "o")]) == 2
    assert "not a folder" in capsys.readouterr().err
    data = tmp_path / "busi"
    data.mkdir()
    assert main(["demo", "--data", str(data), "--out", str(data / "demo")]) == 2
    assert "overlap" in capsys.readouterr().err
    assert not (data / "demo").exists()


def test_demo_never_writes_into_a_folder_of_other_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my notes\n")
    assert main(["demo", "--out", str(out), "--minutes", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "my notes\n" and sorted(p.name for p in out.iterdir()) == ["report.md"]


def test_a_failed_demo_step_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import busmonai.demo

    report = {"seconds": 1.0, "steps": {"data": {"status": "ok"}, "autoencoder": {"status": "failed", "error": "x"},
                                        "ldm": {"status": "skipped"}}}
    monkeypatch.setattr(busmonai.demo, "run_demo", lambda *a, **k: report)
    assert main(["demo", "--out", str(tmp_path / "d")]) == 1
    assert "demo steps failed: autoencoder" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_exit_2_with_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert main(["phantom", "--out", str(locked / "p"), "--n", "2"]) == 2
    finally:
        locked.chmod(stat.S_IRWXU)
    assert str(locked) in capsys.readouterr().err


def test_an_os_error_on_the_output_side_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk (ENOSPC raised where the files are written) is the error contract, not a traceback."""
    import errno

    import busmonai.data.phantom

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "p"))

    monkeypatch.setattr(busmonai.data.phantom, "write_phantom_dataset", full)
    assert main(["phantom", "--out", str(tmp_path / "p"), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(tmp_path / "p") in err


def test_outputs_follow_the_umask(tmp_path: Path) -> None:
    from busmonai.data.imageio import save_png
    from busmonai.files import atomic_directory, write_json_atomic

    old = os.umask(0o022)
    try:
        save_png(np.zeros((4, 4), np.uint8), tmp_path / "a.png")
        write_json_atomic({"a": 1}, tmp_path / "a.json")
        with atomic_directory(tmp_path / "folder") as folder:
            (folder / "x").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755


# --- prepare's output folder, stale temporary files, SIGTERM, datalist items, decompression bombs ---

class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs in the writer (not even ``except Exception``)."""


def _prepared_consistently(out: Path) -> dict:
    """The datalist of ``out``, after checking that it lists exactly the images and masks there."""
    import json

    datalist = json.loads((out / "datalist.json").read_text())
    items = datalist["training"] + datalist["validation"] + datalist["test"]
    for key, folder in (("image", "images"), ("mask", "masks")):
        assert sorted(i[key] for i in items) == sorted(f"{folder}/{p.name}" for p in (out / folder).iterdir())
    return datalist


def _backdate(*paths: Path) -> None:
    """Make ``paths`` look an hour old, as if left by a process that ran before this one."""
    import time

    for path in paths:
        os.utime(path, (time.time() - 3600,) * 2, follow_symlinks=False)


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def _hidden(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.glob(f".{name}.*"))


def test_prepare_refuses_a_folder_of_other_files_and_keeps_them(phantom_source: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    assert main(["prepare", "busi", "--root", str(phantom_source), "--out", str(out), "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "notes.txt" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes\n"
    assert _hidden(tmp_path, "mine") == []


def test_prepare_refuses_a_symlinked_out(phantom_source: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert main(["prepare", "busi", "--root", str(phantom_source), "--out", str(link), "--size", "16"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert link.is_symlink() and list(real.iterdir()) == []


def test_prepare_overwrite_replaces_only_what_it_owns(phantom_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    (out / "images").mkdir(parents=True)
    (out / "images" / "stale.png").write_bytes(b"not ours to keep")
    (out / "synthetic").mkdir()
    (out / "synthetic" / "kept.txt").write_text("a set kept inside\n")
    (out / "notes.txt").write_text("my notes\n")
    argv = ["prepare", "busi", "--root", str(phantom_source), "--out", str(out), "--size", "16"]
    assert main([*argv, "--overwrite"]) == 0
    assert _prepared_consistently(out)["size"] == [16, 16]  # the stale image went with images/
    assert (out / "notes.txt").read_text() == "my notes\n"
    assert (out / "synthetic" / "kept.txt").read_text() == "a set kept inside\n"
    notes = (out / "notes.txt").stat().st_ino
    assert main([*argv[:-1], "32"]) == 0  # its own earlier output: replaced without --overwrite
    assert _prepared_consistently(out)["size"] == [32, 32]
    assert (out / "notes.txt").stat().st_ino == notes and (out / "synthetic" / "kept.txt").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["datalist.json", "images", "masks", "notes.txt", "synthetic"]
    assert _hidden(tmp_path, "mine") == []


@pytest.mark.parametrize("fault", ["removing the old output", "renaming the new one in"])
def test_a_kill_during_prepare_overwrite_leaves_a_complete_output(fault: str, phantom_source: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while the old output is deleted: the new one is complete; killed before the new one
    is in place: the old one is back. Either way the datalist lists exactly the files there."""
    import shutil

    import busmonai.files
    from busmonai.data.prepare import prepare_dataset

    out = tmp_path / "prepared"
    prepare_dataset("busi", phantom_source, out, size=32, progress=False)
    (out / "notes.txt").write_text("my notes\n")
    real_rmtree, real_rename = shutil.rmtree, os.rename

    def dying_rmtree(path: str | Path, *args: object, **kwargs: object) -> None:
        if Path(path).name.startswith(".prepared.") and Path(path).is_dir():
            shutil.rmtree = real_rmtree  # type: ignore[assignment]  # the cleanup after the kill is real
            min((Path(path) / "images").iterdir()).unlink()  # half deleted ...
            raise _Killed()
        real_rmtree(path, *args, **kwargs)

    def dying_rename(source: str | Path, target: str | Path) -> None:
        if str(source).endswith(".partial") and Path(target) == out:
            raise _Killed()
        real_rename(source, target)

    with monkeypatch.context() as patch, pytest.raises(_Killed):
        if fault == "removing the old output":
            patch.setattr(shutil, "rmtree", dying_rmtree)
        else:
            patch.setattr(busmonai.files.os, "rename", dying_rename)
        prepare_dataset("busi", phantom_source, out, size=16, progress=False)
    size = 16 if fault == "removing the old output" else 32
    assert _prepared_consistently(out)["size"] == [size, size]
    assert (out / "notes.txt").read_text() == "my notes\n"
    assert all(name.endswith(".partial") for name in _hidden(tmp_path, "prepared"))  # leftovers, never outputs


def test_stale_partials_are_removed_on_the_next_run(phantom_source: Path, tmp_path: Path) -> None:
    import torch

    from busmonai.checkpoint_io import write_checkpoint

    dead = _dead_pid()
    stale_dir = tmp_path / f".prepared.{dead}.k3jd82ma.partial"
    (stale_dir / "images").mkdir(parents=True)
    stale_old = tmp_path / ".prepared.x8s7d6f5.partial"  # the name of earlier versions, without a pid
    stale_old.mkdir()
    live = tmp_path / f".prepared.{os.getpid()}.live0001.partial"  # a writer that still runs: kept
    live.mkdir()
    other = tmp_path / ".prepared.notes"  # not our pattern: kept
    other.write_text("x")
    stale_ckpt = tmp_path / f".model.pt.{dead}.0123456789ab.partial"
    stale_ckpt.write_bytes(b"half a checkpoint")
    fresh = tmp_path / f".model.pt.{dead}.ba9876543210.partial"  # written after this process started: kept
    _backdate(stale_dir, stale_old, live, other, stale_ckpt)
    fresh.write_bytes(b"")

    assert main(["prepare", "busi", "--root", str(phantom_source), "--out", str(tmp_path / "prepared"),
                 "--size", "16"]) == 0
    write_checkpoint({"x": torch.zeros(1)}, tmp_path / "model.pt")
    assert _hidden(tmp_path, "prepared") == sorted([live.name, other.name])
    assert _hidden(tmp_path, "model.pt") == [fresh.name]


def test_an_output_moved_aside_by_a_killed_replacement_comes_back(tmp_path: Path) -> None:
    """Killed between 'old output aside' and 'new output in': the next run renames the old one back."""
    from busmonai.files import remove_stale_partials

    aside = tmp_path / f".masks.{_dead_pid()}.1a2b3c4d.replaced"
    aside.mkdir()
    (aside / "masks.json").write_text("{}")
    _backdate(aside)
    assert remove_stale_partials(tmp_path / "masks") == [aside]
    assert (tmp_path / "masks" / "masks.json").read_text() == "{}" and not aside.exists()


def test_sigterm_removes_the_unfinished_output_and_exits_143(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import signal

    import busmonai.data.phantom

    real_save = busmonai.data.phantom._save_png
    calls = []

    def save_then_terminate(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` or a batch scheduler would

    monkeypatch.setattr(busmonai.data.phantom, "_save_png", save_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["phantom", "--out", str(tmp_path / "p"), "--n", "6"]) == 143
    assert "terminated" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary folder
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("split", ["nan,0,0.2", "inf,0,0.2", "0.8,nan,0.2"])
def test_a_non_finite_split_fraction_is_exit_2(split: str, phantom_source: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "busi", "--root", str(phantom_source), "--out", str(tmp_path / "o"), "--split", split]) == 2
    assert "expected three non-negative fractions" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_evaluate_json_into_a_folder_is_exit_2(datalist32: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    assert main(["evaluate", "curvature", str(datalist32), "--json", str(folder)]) == 2
    assert f"--json {folder} is a folder" in capsys.readouterr().err and list(folder.iterdir()) == []


def _datalist(folder: Path, bad: object) -> Path:
    import json

    good = {"image": "images/a.png", "mask": "masks/a.png", "class": "benign", "label": 0}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "datalist.json"
    path.write_text(json.dumps({"training": [good, bad], "validation": [], "test": []}))
    return path


_BAD_ITEMS = {
    "climbs out": ({"image": "../../secret.png", "mask": "masks/b.png", "class": "benign"}, "'image'"),
    "absolute elsewhere": ({"image": "/etc/passwd", "mask": "masks/b.png", "class": "benign"}, "'image'"),
    "null mask": ({"image": "images/b.png", "mask": None, "class": "benign"}, "'mask'"),
    "number as path": ({"image": "images/b.png", "mask": 7, "class": "benign"}, "'mask'"),
    "not an object": ("images/b.png", "not an object"),
}


_BAD_ITEMS["missing mask"] = ({"image": "images/b.png", "class": "malignant"}, "'mask'")


def _read_with(reader: str, path: Path) -> None:
    """Read ``path`` the way one of the package's datalist readers does."""
    from busmonai.data.dataset import datalist_split
    from busmonai.metrics.sources import datalist_items
    from busmonai.synthesis.generate import GenerationSettings, make_plan
    from busmonai.synthesis.masks import fit_prior_from_datalist

    if reader == "bundles":
        datalist_split(path, "training", keys=("image", "mask"))
    elif reader == "metrics":
        datalist_items(path, "training", classes=None, keys=("image", "mask"))
    elif reader == "generate masks":  # generate --mask-source real --datalist
        make_plan(GenerationSettings(n=2, mask_source="real", datalist=str(path), image_size=32))
    elif reader == "generate backgrounds":  # generate --background (tumor images as backgrounds)
        make_plan(GenerationSettings(n=2, background=str(path), background_classes="tumor", image_size=32))
    else:  # masks --datalist
        fit_prior_from_datalist(path)


@pytest.mark.parametrize("reader", ["bundles", "metrics", "generate masks", "generate backgrounds", "masks"])
@pytest.mark.parametrize("case", list(_BAD_ITEMS))
def test_a_bad_datalist_item_is_an_input_error_naming_it(case: str, reader: str, tmp_path: Path) -> None:
    from busmonai.errors import BusmonaiInputError

    bad, key = _BAD_ITEMS[case]
    path = _datalist(tmp_path / "set", bad)
    with pytest.raises(BusmonaiInputError) as info:
        _read_with(reader, path)
    message = str(info.value)
    assert str(path) in message and "item 1 of the 'training' split" in message and key in message, message


def test_external_paths_only_when_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from busmonai.data.dataset import datalist_split

    folder = tmp_path / "set"
    inside = {"image": str(folder / "images" / "b.png"), "mask": "masks/../masks/b.png", "class": "benign"}
    assert len(datalist_split(_datalist(folder, inside), keys=("image", "mask"))) == 2  # absolute but inside
    path = _datalist(folder, _BAD_ITEMS["absolute elsewhere"][0])
    assert datalist_split(path, keys=("image",), allow_external=True)[1]["image"] == "/etc/passwd"
    climbing = _datalist(folder, {"image": "images/b.png", "mask": "../b.png", "class": "benign"})
    assert main(["evaluate", "curvature", str(climbing)]) == 2  # the CLI: exit 2, never a traceback
    assert "item 1 of the 'training' split: 'mask' '../b.png' leads outside" in capsys.readouterr().err


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` px, with almost no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (10_000, 9_000)], ids=["10 G px", "90 M px"])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_an_input_error(width: int, height: int, phantom_copy: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from busmonai.data.dataset import LoadPNGd
    from busmonai.data.imageio import load_gray
    from busmonai.errors import BusmonaiInputError

    bomb = phantom_copy / "benign" / "benign (1).png"
    bomb.write_bytes(_png_header(width, height))
    for load in (load_gray, LoadPNGd(keys="image").load):
        with pytest.raises(BusmonaiInputError, match="too large to decode safely") as info:
            load(bomb)
        assert str(bomb) in str(info.value)
    assert main(["prepare", "busi", "--root", str(phantom_copy), "--out", str(tmp_path / "o"), "--size", "16"]) == 2
    assert str(bomb) in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("reader", ["generate masks", "masks"])
def test_a_listed_mask_file_that_is_missing_is_an_input_error(reader: str, tmp_path: Path) -> None:
    from busmonai.errors import BusmonaiInputError

    path = _datalist(tmp_path / "set", {"image": "images/b.png", "mask": "masks/b.png", "class": "malignant"})
    with pytest.raises(BusmonaiInputError) as info:
        _read_with(reader, path)
    assert str(tmp_path / "set" / "masks" / "a.png") in str(info.value) and "file not found" in str(info.value)


def _bundle_run(tmp_path: Path, *args: str, **env: str) -> "subprocess.CompletedProcess[str]":
    import subprocess
    import sys

    from bundle_runner import REPO

    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(REPO / "bundles/ldm/configs/train.json"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_a_bundle_runs_input_error_is_one_line_and_exit_2(trained_autoencoder: Path, datalist32: Path,
                                                          tmp_path: Path) -> None:
    """Under ``python -m monai.bundle run`` MONAI wraps the input error in its own exceptions; the
    user sees the busmonai message alone (exit 2), and the traceback only when asking for it."""
    import sys

    from busmonai.errors import input_error_hook

    args = ("--datalist", str(datalist32), "--output_dir", str(tmp_path / "ldm"), "--image_size", "32",
            "--autoencoder_ckpt", str(tmp_path / "missing" / "model.pt"))
    run = _bundle_run(tmp_path, *args)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "RuntimeError" not in run.stderr, run.stderr[-2000:]
    assert f"error: {tmp_path / 'missing' / 'model.pt'}: checkpoint not found for 'autoencoder_ckpt'" in run.stderr
    assert sys.excepthook is not input_error_hook  # importing busmonai elsewhere leaves the hook alone


def test_the_bundle_run_hook_passes_other_errors_and_shows_tracebacks_on_request(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import busmonai.errors as errors

    passed: list[BaseException] = []
    monkeypatch.setattr(errors, "_previous_hook", lambda kind, error, trace: passed.append(error))
    monkeypatch.setattr(errors.os, "_exit", lambda code: passed.append(SystemExit(code)))
    wrapped = RuntimeError("Failed to evaluate ConfigExpression")
    wrapped.__cause__ = errors.BusmonaiInputError("x.json: not found; pass --datalist")
    errors.input_error_hook(RuntimeError, wrapped, None)
    assert isinstance(passed[-1], SystemExit) and passed[-1].code == 2
    assert "error: x.json: not found; pass --datalist" in capsys.readouterr().err
    disk = RuntimeError("Failed to evaluate")
    disk.__cause__ = OSError(28, "No space left on device", "/out/model.pt")
    errors.input_error_hook(RuntimeError, disk, None)
    assert passed[-1].code == 2 and "error: /out/model.pt: No space left on device" in capsys.readouterr().err
    bug = KeyError("a bug")
    errors.input_error_hook(KeyError, bug, None)
    assert passed[-1] is bug  # not an input or disk error: the normal traceback
    monkeypatch.setenv(errors.TRACEBACK_ENV, "1")
    errors.input_error_hook(RuntimeError, wrapped, None)
    assert passed[-1] is wrapped  # BUSMONAI_TRACEBACK=1: the whole traceback
