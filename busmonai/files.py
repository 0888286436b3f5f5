"""Write a whole output folder so that a crash never leaves it half-written."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
    try:
        yield tmp
        if out.exists() and replace:
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
