"""The bottom I/O layer: outputs written so that a crash never leaves them half-written, and file
digests.

- :func:`atomic_directory`: a whole output folder appears at once, or not at all; an earlier one
  is replaced only once the new one is complete, optionally keeping the files the command does
  not own.
- :func:`remove_stale_partials`: the hidden ``.NAME.<pid>.<random>.partial`` siblings that a
  killed process left behind are removed on the next run.
- :func:`write_json_atomic`: a JSON file through a temporary sibling and a rename.
- :func:`file_digest`: the short SHA-256 that checkpoints and synthetic datalists record.

Checkpoints are read and written by :mod:`busmonai.checkpoint_io`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from busmonai.errors import BusmonaiInputError

PARTIAL_SUFFIX = ".partial"
"""Name ending of a temporary sibling that is being written (a file or a folder)."""
REPLACED_SUFFIX = ".replaced"
"""Name ending of a previous output folder moved aside while its replacement is renamed in."""
_MIDDLE = re.compile(r"^(?:(\d+)\.)?[A-Za-z0-9_]+$")
"""``<pid>.<random>`` (or a bare ``<random>``, as earlier versions wrote it) between
``.NAME.`` and the suffix."""


def _process_start() -> float:
    """When this process started (seconds since the epoch); the import time when unknown."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - psutil missing or refused: fall back to the import time
        return time.time()


_STARTED = _process_start()

def user_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: what ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text through a temporary sibling, flushed to disk, and a rename, with the user's umask
    (0644 under 022): ``path`` holds the old or the new text, never a part of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, user_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(data: Mapping[str, Any], path: str | Path) -> None:
    """:func:`write_text_atomic` of ``data`` as indented JSON (non-JSON numbers as floats)."""
    write_text_atomic(path, json.dumps(data, indent=1, default=float) + "\n")


def file_digest(path: str | Path, length: int = 16) -> str:
    """Short SHA-256 of a file's bytes (recorded in checkpoints and synthetic datalists)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def partial_prefix(target: str | Path) -> str:
    """``.NAME.<pid>.``: how the names of ``target``'s temporary siblings begin (a random part and
    :data:`PARTIAL_SUFFIX` follow). The process id tells :func:`remove_stale_partials` whether the
    writer is still running."""
    return f".{Path(target).name}.{os.getpid()}."


def _writer_alive(pid: int | None) -> bool:
    """True if process ``pid`` may still be writing: it runs on this machine, or that cannot be
    checked (no pid in the name counts as not running)."""
    if pid is None or pid <= 0:
        return False
    if os.name != "posix":  # os.kill(pid, 0) probes only on POSIX
        return True
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process
        return True
    except (OverflowError, OSError):  # ProcessLookupError: gone
        return False
    return True


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_partials(target: str | Path) -> list[Path]:
    """Clean up after a killed writer of ``target``: remove its stale temporary siblings.

    A sibling is ours when its name is ``.NAME.<pid>.<random>.partial`` (or the older
    ``.NAME.<random>.partial``), ``NAME`` being ``target``'s name. It is stale when it was last
    changed before this process started and the process that wrote it no longer runs; nothing
    else is touched. A stale ``.NAME.<pid>.<random>.replaced`` folder (a previous output moved
    aside during a replacement) is removed when ``target`` exists, and renamed back to
    ``target`` when it does not (the kill fell between the two renames of the replacement).

    Args:
        target: the final file or folder.

    Returns:
        The siblings removed or renamed back, in name order.
    """
    target = Path(target)
    prefix = f".{target.name}."
    try:
        names = sorted(os.listdir(target.parent))
    except OSError:
        return []
    cleaned = []
    for name in names:
        suffix = next((s for s in (PARTIAL_SUFFIX, REPLACED_SUFFIX) if name.endswith(s)), None)
        match = _MIDDLE.match(name[len(prefix):-len(suffix)]) if suffix and name.startswith(prefix) else None
        if match is None:
            continue
        sibling = target.parent / name
        try:
            changed = sibling.lstat().st_mtime
        except OSError:
            continue
        if changed >= _STARTED or _writer_alive(int(match[1]) if match[1] else None):
            continue
        if suffix == REPLACED_SUFFIX and not os.path.lexists(target):
            os.rename(sibling, target)
        else:
            _remove_path(sibling)
        cleaned.append(sibling)
    return cleaned


def refuse_symlink(out: str | Path, option: str = "--out") -> None:
    """Raise when ``out`` is a symbolic link: replacing it would replace the link, not the folder
    it points to.

    Raises:
        BusmonaiInputError: naming the link, its target and the fix.
    """
    out = Path(out)
    if out.is_symlink():
        raise BusmonaiInputError(
            f"{option} {out} is a symbolic link to {os.readlink(out)}; pass the folder it points to "
            f"({out.resolve()}) or a new folder"
        )


def _link_or_copy(source: str, destination: str) -> None:
    """Hard-link a file (no bytes copied, same file), or copy it where links are refused."""
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, destination, follow_symlinks=False)


def _carry_over(old: Path, new: Path, owned: Collection[str]) -> None:
    """Give ``new`` every top-level entry of ``old`` that is not ``owned`` (and that ``new`` does not
    hold), as hard links: the user's files survive the swap, and ``old`` stays complete until then."""
    for entry in sorted(old.iterdir()):
        target = new / entry.name
        if entry.name in owned or os.path.lexists(target):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(target))


def _swap_in(new: Path, out: Path) -> None:
    """Rename the complete ``new`` over the existing ``out``: ``out`` is first renamed aside, then
    ``new`` in (on failure the old one is put back), then the old one is removed."""
    aside = out.with_name(f"{partial_prefix(out)}{uuid.uuid4().hex[:8]}")
    os.rename(out, f"{aside}{REPLACED_SUFFIX}")
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(f"{aside}{REPLACED_SUFFIX}", out)
        raise
    # the old folder becomes a plain .partial first: a kill while it is removed leaves a leftover
    # that the next run deletes, never a half-deleted folder that could be taken for an output
    try:
        os.rename(f"{aside}{REPLACED_SUFFIX}", f"{aside}{PARTIAL_SUFFIX}")
    except OSError:  # the new output is in place; the next run removes the old one
        return
    shutil.rmtree(f"{aside}{PARTIAL_SUFFIX}", ignore_errors=True)


@contextmanager
def atomic_directory(out: Path, replace: bool = False, owned: Collection[str] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes ``out`` when the block succeeds.

    On an exception (including a ``KeyboardInterrupt`` or the CLI's SIGTERM) the temporary folder
    is removed and ``out`` is left as it was. Stale temporary siblings of ``out`` from a killed
    earlier run are removed first (:func:`remove_stale_partials`). A replaced ``out`` is removed
    only after the new folder has been renamed into place.

    Args:
        out: the final folder; a symbolic link is refused.
        replace: replace an existing ``out`` (the caller has checked it is safe, e.g. a previous
            output of the same command).
        owned: with ``replace``, the top-level names the command writes (``images``,
            ``datalist.json``); every other entry of the old ``out`` is kept (hard-linked into
            the new folder before the swap). ``None``: the whole folder is replaced.

    Raises:
        BusmonaiInputError: ``out`` is a symbolic link.
    """
    out = Path(out)
    refuse_symlink(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=partial_prefix(out), suffix=PARTIAL_SUFFIX))
    os.chmod(tmp, user_mode(0o777))  # mkdtemp makes 0700: a colleague could not read the output
    try:
        yield tmp
        if replace and out.is_dir():
            if owned is not None:
                _carry_over(out, tmp, owned)
            shutil.copymode(out, tmp)
            _swap_in(tmp, out)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
