"""Atomic writes of files and whole directories: a kill at any instant never leaves a torn result.

Files: the content goes to a temporary sibling (same directory, so the same file system), is flushed
to disk, then ``os.replace``-d over the target: readers see the old file or the new one, never half.

Directories: :func:`atomic_directory` yields a fresh temporary sibling to fill; on success it is
swapped in with renames. At any instant the target path holds the old complete directory or the new
complete one; the only gap (between the two renames of a replacement) is repaired by the next call
for the same path, which also deletes stale temporary siblings. One writer per path at a time.

Use these instead of hand-written temp-file + rename code::

    atomic_write_json(path, record)                      # also atomic_write_text / _bytes
    with atomic_file(path) as tmp:                       # for libraries that write to a path
        np.savez(tmp, ...)
    with atomic_directory(model_dir) as tmp:             # a directory as one unit
        (tmp / "weights.bin").write_bytes(...)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_directory",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "recover_directory",
]

# Sibling names: ".<name>.tmp-XXXX" (being written), ".<name>.new-XXXX" (complete, about to be
# swapped in), ".<name>.old-XXXX" (the replaced directory, about to be deleted).
_TMP, _NEW, _OLD = "tmp", "new", "old"


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path`` to disk (best effort for directories: not every file system allows it)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return
        raise
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary name ends with ``path``'s suffix (libraries such as numpy pick the format from
    it). On an exception the temporary file is removed and ``path`` is left as it was. Parent
    directories are created.

    Args:
        path: The file to (re)write.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not mkstemp: its 0600 mode would stick to the result; a random name is as unique here
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`); returns ``path``."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`); returns ``path``."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, indent: int | None = 1, **kwargs: Any
) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically; returns ``path``.

    Args:
        path: The file to (re)write.
        obj: A JSON-serialisable object (serialised before anything is written).
        indent: ``json.dumps`` indentation.
        **kwargs: More ``json.dumps`` arguments (``ensure_ascii``, ``sort_keys``, ...).
    """
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def _siblings(path: Path, kind: str) -> list[Path]:
    """The temporary siblings of ``path`` of one kind, newest first."""
    found = [p for p in path.parent.glob(f".{path.name}.{kind}-*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def recover_directory(path: str | os.PathLike[str]) -> None:
    """Finish or undo an interrupted :func:`atomic_directory` swap of ``path``; delete leftovers.

    If a kill fell between the two renames of a replacement, ``path`` is missing: the complete new
    directory is put in place (or, without one, the old directory is put back). Then every
    temporary sibling of ``path`` is deleted. Safe to call any time no writer is active on ``path``.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    if not path.exists():
        candidates = _siblings(path, _NEW) or _siblings(path, _OLD)
        if candidates:
            os.rename(candidates[0], path)
    for kind in (_TMP, _NEW, _OLD):
        for stale in _siblings(path, kind):
            shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory in a temporary sibling, then swap it in for ``path`` in one step.

    On success the new directory replaces ``path`` (whose old content is deleted); on an exception
    the temporary directory is deleted and ``path`` is untouched. A kill at any instant leaves the
    old complete directory or the new one (see :func:`recover_directory`, run on entry). The caller
    decides beforehand whether replacing ``path`` is allowed.

    Args:
        path: The directory to create or replace; parents are created.

    Yields:
        An empty temporary directory on the same file system to write the content into.

    Raises:
        ValueError: ``path`` exists and is not a directory.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    tmp = path.with_name(f".{path.name}.{_TMP}-{secrets.token_hex(6)}")
    tmp.mkdir()  # the usual umask mode (mkdtemp's 0700 would stick to the result)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        _fsync(tmp, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, path)


def _swap_in(tmp: Path, path: Path) -> None:
    """Mark ``tmp`` complete (``.new-``), move the old ``path`` aside (``.old-``), rename, clean."""
    token = tmp.name.rsplit("-", 1)[-1]
    new = path.with_name(f".{path.name}.{_NEW}-{token}")
    os.rename(tmp, new)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{_OLD}-{token}")
        os.rename(path, old)
    os.rename(new, path)
    _fsync(path.parent, directory=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
