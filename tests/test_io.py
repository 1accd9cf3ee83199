"""Atomic file and directory writes (slimkit._io): a crash leaves the old or the new content."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slimkit._io import (
    atomic_directory,
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    recover_directory,
)


def listing(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def test_file_writers_replace_content_and_leave_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.json"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and target.read_text().endswith("\n")
    atomic_write_text(target, "x")
    assert target.read_text() == "x"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_failed_file_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_file_keeps_the_suffix_and_the_umask_mode(tmp_path):
    target = tmp_path / "a.npz"
    with atomic_file(target) as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path
        tmp.write_bytes(b"1")
    reference = tmp_path / "plain"
    reference.write_bytes(b"1")
    assert target.stat().st_mode == reference.stat().st_mode


def test_directory_is_replaced_as_a_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    assert listing(target) == {"a": "1", "b": "1"}
    with atomic_directory(target) as tmp:
        assert list(tmp.iterdir()) == []
        (tmp / "a").write_text("2")
    assert listing(target) == {"a": "2"}  # b is gone: the new directory is exactly what was written
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_exception_mid_write_leaves_the_old_directory(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as tmp:
        (tmp / "a").write_text("new")
        raise KeyboardInterrupt
    assert listing(target) == {"a": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def run_killed(tmp_path: Path, body: str) -> None:
    """Run ``body`` in a child process that dies with os._exit (no cleanup, like a kill -9)."""
    code = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        import slimkit._io as io
        target = Path({str(tmp_path / "model")!r})
        """
    ) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr


def test_kill_while_writing_keeps_old_and_next_run_cleans_the_temp(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "a").write_text("old")
    run_killed(
        tmp_path,
        """
        with io.atomic_directory(target) as tmp:
            (tmp / "a").write_text("half")
            os._exit(9)
        """,
    )
    assert listing(target) == {"a": "old"}
    stale = [p.name for p in tmp_path.iterdir() if p.name != "model"]
    assert len(stale) == 1 and stale[0].startswith(".model.tmp-")
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("new")
    assert listing(target) == {"a": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize("kill_after_renames", [1, 2, 3])
def test_kill_during_the_swap_leaves_a_complete_directory(tmp_path, kill_after_renames):
    """A kill after the 1st (tmp→new), 2nd (old aside) or 3rd rename; recovery completes it."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "a").write_text("old")
    run_killed(
        tmp_path,
        f"""
        real_rename, calls = os.rename, []
        def rename(src, dst):
            real_rename(src, dst)
            calls.append(dst)
            if len(calls) == {kill_after_renames}:
                os._exit(9)
        io.os.rename = rename
        with io.atomic_directory(target) as tmp:
            (tmp / "a").write_text("new")
        """,
    )
    if target.exists():  # the old or the new directory, never a mixture
        assert listing(target)["a"] in ("old", "new")
    recover_directory(target)
    if kill_after_renames == 1:  # killed before the old directory was moved: it stays
        assert listing(target) == {"a": "old"}
    else:
        assert listing(target) == {"a": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_directory_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"), atomic_directory(tmp_path / "f"):
        pass
