"""The one rule for where slimkit writes: checked by every writer, before any long work.

Every command and API function that writes a model directory, a dataset, a sensitivity file, plots
or a report calls :func:`check_target` for each path it is about to write:

1. **A source is never a destination**, with or without ``overwrite``: a target equal to one of
   the command's inputs (model directory, dataset, sensitivity file), inside one, or containing one
   is refused (``quantize M --save-dir M``, ``train --pretrain X/best_model --save-dir X``).
2. **New or empty**: a target that does not exist, or an empty directory, is written.
3. **Replaced only with ``overwrite``**: a target that holds something slimkit writes of the same
   kind — a model directory (``model.yml`` and model files only), a dataset directory slimkit
   generated, a file where a file goes (for a sensitivity file: a sensitivity file) — is replaced
   only with ``--overwrite`` / ``overwrite=True``.
4. **Never replaced**: anything else — a directory holding files slimkit does not recognise (the
   user's own ``labels.txt``, notes, images), a file where a directory goes or the reverse — is
   refused even with ``overwrite``: slimkit never deletes what it did not write.
5. The nearest existing parent must be a writable directory (checked here, before the work).

What a run created itself it may replace without ``overwrite``: a run checks its targets once, at
its start, and from then on rewrites them freely (``train`` replaces ``best_model/`` and
``epoch_N/`` epoch after epoch; an analysis resumes its own sensitivity file; the demo redoes its
own interrupted stages). Model directories and datasets are then written whole through
:func:`slimkit._io.atomic_directory`, files through :func:`slimkit._io.atomic_file`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from slimkit._io import is_temporary

__all__ = ["OVERWRITE_HINT", "Kind", "check_sources", "check_target", "listing"]

Kind = Literal["model", "dataset", "file", "resume"]
"""``model``/``dataset``: a directory written whole; ``file``: one file; ``resume``: a file the
writer may continue (its owner decides whether an existing one is the same job)."""

OVERWRITE_HINT = "pass --overwrite (API: overwrite=True) to replace it"
_WHAT = {
    "model": "model directory",
    "dataset": "dataset",
    "file": "file",
    "resume": "file",
}


def _show(path: Path) -> str:
    return repr(str(path))


def check_sources(
    target: str | os.PathLike[str], sources: Iterable[str | os.PathLike[str] | None]
) -> None:
    """A ``ValueError`` if writing ``target`` would touch one of ``sources`` (the inputs).

    Refused: ``target`` is a source, or contains one (replacing it would delete the input), or lies
    inside a source model directory (which must hold model files only). A target inside a dataset
    directory is allowed (``--data . --save-dir output``).

    Raises:
        ValueError: naming the input and asking for another destination.
    """
    t = Path(target).resolve()
    for source in sources:
        if source is None:
            continue
        s = Path(source).resolve()
        if t == s or t in s.parents:
            how = "is" if t == s else "contains"
        elif s in t.parents and (s / "model.yml").is_file():
            how = "lies inside"
        else:
            continue
        raise ValueError(
            f"the output {_show(Path(target))} {how} the input {_show(Path(source))}; "
            "slimkit never writes over its own input (not even with --overwrite): "
            "choose another output path"
        )


def _check_writable(path: Path) -> None:
    """The nearest existing ancestor of ``path`` (its parent when it exists) is a writable dir."""
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(
            f"cannot write {_show(path)}: {_show(ancestor)} is a file, not a directory"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {_show(path)}: no write permission in {_show(ancestor)}")


def listing(path: Path) -> list[str]:
    """What a directory holds (slimkit's own temporary leftovers aside)."""
    return sorted(p.name for p in path.iterdir() if not is_temporary(p.name))


def check_target(
    path: str | os.PathLike[str],
    kind: Kind,
    *,
    overwrite: bool = False,
    sources: Iterable[str | os.PathLike[str] | None] = (),
    foreign: Callable[[Path], list[str]] | None = None,
) -> Path:
    """Check that ``path`` may be written now (the module docstring's rule); returns it.

    Args:
        path: The model directory, dataset directory or file about to be written.
        kind: What is written there (see :data:`Kind`).
        overwrite: Whether replacing something slimkit wrote before is allowed.
        sources: The command's inputs (None entries are skipped): never overlapped.
        foreign: For an existing ``path``: what in it slimkit does not write for this kind (the
            names of foreign files; empty when it is a model directory, a generated dataset, a
            sensitivity file, ...). For ``file`` targets None means any file is replaceable; for
            directory targets None means nothing is.

    Raises:
        ValueError: the write is refused; the message says why and what to do.
    """
    path = Path(path)
    check_sources(path, sources)
    _check_writable(path)
    what = _WHAT[kind]
    if not os.path.lexists(path):
        return path
    if kind in ("file", "resume"):
        if path.is_dir():
            raise ValueError(f"{_show(path)} is a directory; give a file name for the output")
        if kind == "resume":
            return path
        if foreign is not None and foreign(path):
            raise ValueError(
                f"{_show(path)} exists and is not a file slimkit wrote; slimkit never replaces "
                "it (not even with --overwrite): choose another name, or move it away"
            )
        if not overwrite:
            raise ValueError(f"{_show(path)} already exists; {OVERWRITE_HINT}")
        return path
    if not path.is_dir():
        raise ValueError(f"{_show(path)} is a file; the {what} needs a directory")
    if not listing(path):
        return path
    shown = listing(path) if foreign is None else foreign(path)
    if not shown:
        if overwrite:
            return path
        raise ValueError(f"{_show(path)} already holds a slimkit {what}; {OVERWRITE_HINT}")
    raise ValueError(
        f"{_show(path)} holds files that are not part of a slimkit {what} ("
        f"{', '.join(shown[:4])}{', ...' if len(shown) > 4 else ''}); slimkit never replaces "
        f"them (not even with --overwrite): choose a new or empty directory for the {what}"
    )
