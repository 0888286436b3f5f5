"""The bottom I/O layer: outputs written so that a crash never leaves them half-written, and file
digests.

- :func:`atomic_directory`: a whole output folder appears at once, or not at all.
- :func:`write_json_atomic`: a JSON file through a temporary sibling and a rename.
- :func:`file_digest`: the short SHA-256 that checkpoints and synthetic datalists record.

Checkpoints are read and written by :mod:`busmonai.checkpoint_io`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def user_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: what ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def write_json_atomic(data: Mapping[str, Any], path: str | Path) -> None:
    """Write JSON through a temporary sibling and a rename, with the user's umask (0644 under 022)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=1, default=float)
            stream.write("\n")
        os.chmod(tmp, user_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digest(path: str | Path, length: int = 16) -> str:
    """Short SHA-256 of a file's bytes (recorded in checkpoints and synthetic datalists)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


@contextmanager
def atomic_directory(out: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes ``out`` when the block succeeds.

    On an exception the temporary folder is removed and ``out`` is left as it was.

    Args:
        out: the final folder.
        replace: remove an existing ``out`` before the rename (the caller has checked it is
            safe to remove, e.g. a previous output of the same command).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    os.chmod(tmp, user_mode(0o777))  # mkdtemp makes 0700: a colleague could not read the output
    try:
        yield tmp
        if out.exists() and replace:
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
