"""Atomic writes of files and whole directories: a kill at any instant never leaves a torn result.

Files: the content goes to a temporary sibling (same directory, so the same file system), is flushed
to disk, then ``os.replace``-d over the target: readers see the old file or the new one, never half.

Directories: :func:`atomic_directory` yields a fresh temporary sibling to fill; on success it is
swapped in. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)`` call, so the target path holds
the old complete directory or the new complete one at every instant. Elsewhere it takes two renames;
the gap between them is repaired by :func:`recover_directory` (run by the next writer of the path).

Temporary names carry the writer's process id (``.<name>.tmp-<pid>-<hex>``, ``.<name>.<pid>-<hex>
.tmp<suffix>``): the next writer of the same path deletes the leftovers of processes that are no
longer running (a kill -9 runs no cleanup), and never those of a live writer.

Use these instead of hand-written temp-file + rename code::

    atomic_write_json(path, record)                      # also atomic_write_text / _bytes
    with atomic_file(path) as tmp:                       # for libraries that write to a path
        np.savez(tmp, ...)
    with atomic_directory(model_dir) as tmp:             # a directory as one unit
        (tmp / "weights.bin").write_bytes(...)

Whether a path may be written at all is decided by :mod:`slimkit._outputs`, before the work.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import sys
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
    "is_temporary",
    "recover_all",
    "recover_directory",
]

# Directory siblings: ".<name>.tmp-<pid>-<hex>" (being written), ".<name>.new-<pid>-<hex>" (complete,
# about to be swapped in), ".<name>.old-<pid>-<hex>" (the replaced directory, about to be deleted).
_TMP, _NEW, _OLD = "tmp", "new", "old"
_DIR_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|new|old)-(?:(?P<pid>\d+)-)?[0-9a-f]+$")
# File siblings: ".<name>.<pid>-<hex>.tmp<suffix>" (older versions: ".<name>.<hex>.tmp<suffix>").
_FILE_TEMP = re.compile(
    r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[0-9a-f]{12}\.tmp(?P<suffix>\.[^.]*)?$"
)


def _token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(6)}"


def _pid_alive(pid: str | None) -> bool:
    """Whether the process that made a temporary name may still be writing it (this machine)."""
    if not pid:
        return False  # a name from before pids were recorded: its writer is long gone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's live process (or an odd number): leave it alone
    return True


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary sibling written by this module (of a file or directory)."""
    return bool(_DIR_TEMP.match(name) or _FILE_TEMP.match(name))


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


def _remove_stale_files(path: Path) -> None:
    """Delete the temporary siblings of file ``path`` left by writers that no longer run."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            m = _FILE_TEMP.match(entry.name)
            if m and m["name"] == path.name and not _pid_alive(m["pid"]):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary name ends with ``path``'s suffix (libraries such as numpy pick the format from
    it). On an exception the temporary file is removed and ``path`` is left as it was; leftovers
    of killed writers of ``path`` are removed first. Parent directories are created.

    Args:
        path: The file to (re)write.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_files(path)
    # not mkstemp: its 0600 mode would stick to the result; a random name is as unique here
    tmp = path.with_name(f".{path.name}.{_token()}.tmp{path.suffix}")
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


# --------------------------------------------------------------------------------- directories
def _siblings(path: Path, kind: str, dead_only: bool = True) -> list[Path]:
    """The temporary directory siblings of ``path`` of one kind (of dead writers), newest first."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            m = _DIR_TEMP.match(entry.name)
            if m and m["name"] == path.name and m["kind"] == kind:
                if not (dead_only and _pid_alive(m["pid"])):
                    found.append(Path(entry.path))
    return sorted(found, key=lambda p: p.lstat().st_mtime, reverse=True)


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def recover_directory(path: str | os.PathLike[str]) -> None:
    """Finish or undo an interrupted :func:`atomic_directory` swap of ``path``; delete leftovers.

    If a kill fell between the two renames of a replacement (only where the one-step exchange is
    not available), ``path`` is missing: the complete new directory is put in place (or, without
    one, the old directory is put back). Then every temporary sibling of ``path`` whose writer no
    longer runs is deleted. Siblings of a live writer are left alone.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    if not os.path.lexists(path):
        candidates = _siblings(path, _NEW) or _siblings(path, _OLD)
        if candidates:
            os.rename(candidates[0], path)
    for kind in (_TMP, _NEW, _OLD):
        for stale in _siblings(path, kind):
            _remove_tree(stale)


def recover_all(directory: str | os.PathLike[str]) -> None:
    """:func:`recover_directory` for every directory in ``directory`` with temporary siblings, and
    removal of the temporary files of dead writers there (e.g. a train run's ``save_dir``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    names = set()
    for entry in os.scandir(directory):
        m = _DIR_TEMP.match(entry.name)
        if m:
            names.add(m["name"])
        m = _FILE_TEMP.match(entry.name)
        if m and not _pid_alive(m["pid"]):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    for name in sorted(names):
        recover_directory(directory / name)


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory in a temporary sibling, then swap it in for ``path`` in one step.

    On success the new directory replaces ``path`` (whose old content is deleted); on an exception
    the temporary directory is deleted and ``path`` is untouched. A kill at any instant leaves the
    old complete directory or the new one, and no temporary sibling that the next writer of
    ``path`` does not delete. The caller decides beforehand whether replacing ``path`` is allowed
    (:func:`slimkit._outputs.check_target`). One writer per path at a time.

    Args:
        path: The directory to create or replace; parents are created.

    Yields:
        An empty temporary directory on the same file system to write the content into.

    Raises:
        ValueError: ``path`` exists and is not a directory.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise ValueError(f"{str(path)!r} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    tmp = path.with_name(f".{path.name}.{_TMP}-{_token()}")
    tmp.mkdir()  # the usual umask mode (mkdtemp's 0700 would stick to the result)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        _fsync(tmp, directory=True)
        _swap_in(tmp, path)
    except BaseException:
        _remove_tree(tmp)
        raise
    _fsync(path.parent, directory=True)


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the complete directory ``tmp`` at ``path``; afterwards ``tmp`` is gone."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    if _exchange(tmp, path):  # one step: path is the new directory, tmp the old one
        _fsync(path.parent, directory=True)
        _remove_tree(tmp)
        return
    # two renames; recover_directory repairs a kill between them
    token = tmp.name.split(f".{_TMP}-", 1)[1]
    new = path.with_name(f".{path.name}.{_NEW}-{token}")
    old = path.with_name(f".{path.name}.{_OLD}-{token}")
    os.rename(tmp, new)
    os.rename(path, old)
    os.rename(new, path)
    _fsync(path.parent, directory=True)
    _remove_tree(old)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns:
        False where the system or the file system does not offer it (nothing was changed).
    """
    global _renameat2
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        libc = ctypes.CDLL(None, use_errno=True)
        _renameat2 = getattr(libc, "renameat2", False)
        if _renameat2:
            c = ctypes
            _renameat2.argtypes = [c.c_int, c.c_char_p, c.c_int, c.c_char_p, c.c_uint]
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
