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
