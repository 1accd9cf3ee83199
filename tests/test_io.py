"""Atomic file and directory writes (slimkit._io): a crash leaves the old or the new content."""

import json
import os
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
    recover_all,
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
def test_kill_during_a_two_rename_swap_leaves_a_complete_directory(tmp_path, kill_after_renames):
    """Without RENAME_EXCHANGE: a kill after the 1st (tmp→new), 2nd (old aside) or 3rd rename;
    recovery completes it."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "a").write_text("old")
    run_killed(
        tmp_path,
        f"""
        io._exchange = lambda a, b: False
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


def test_the_exchange_swap_never_leaves_the_path_missing(tmp_path):
    """With RENAME_EXCHANGE (Linux): killed right after the swap, the new directory is in place
    and the old one waits in the temporary sibling, which the next writer deletes."""
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is Linux-only")
    target = tmp_path / "model"
    target.mkdir()
    (target / "a").write_text("old")
    run_killed(
        tmp_path,
        """
        real = io._exchange
        def exchange(a, b):
            assert real(a, b), "RENAME_EXCHANGE is not available here"
            os._exit(9)
        io._exchange = exchange
        io.os.rename = None  # the exchange path renames nothing
        with io.atomic_directory(target) as tmp:
            (tmp / "a").write_text("new")
        """,
    )
    assert listing(target) == {"a": "new"}
    (stale,) = [p for p in tmp_path.iterdir() if p.name != "model"]
    assert listing(stale) == {"a": "old"}
    recover_directory(target)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    )
    return int(proc.stdout)


def test_leftovers_of_live_writers_are_kept_and_of_dead_ones_removed(tmp_path):
    target = tmp_path / "model"
    live = tmp_path / f".model.tmp-{os.getpid()}-aaaaaaaaaaaa"
    dead = tmp_path / f".model.tmp-{dead_pid()}-bbbbbbbbbbbb"
    legacy = tmp_path / ".model.tmp-cccccccccccc"  # a name from before pids were recorded
    for d in (live, dead, legacy):
        d.mkdir()
    live_file = tmp_path / f".f.json.{os.getpid()}-{'d' * 12}.tmp.json"
    dead_file = tmp_path / f".f.json.{dead_pid()}-{'e' * 12}.tmp.json"
    for f in (live_file, dead_file):
        f.write_text("{")
    recover_directory(target)
    assert live.is_dir() and not dead.exists() and not legacy.exists()
    atomic_write_json(tmp_path / "f.json", {})
    assert live_file.exists() and not dead_file.exists()
    live.rmdir()
    live_file.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_recover_all_cleans_every_stale_sibling_in_a_directory(tmp_path):
    pid = dead_pid()
    (tmp_path / "best_model").mkdir()
    (tmp_path / f".best_model.tmp-{pid}-{'a' * 12}").mkdir()
    (tmp_path / f".epoch_3.tmp-{pid}-{'b' * 12}").mkdir()
    (tmp_path / f".epoch_2.new-{pid}-{'c' * 12}").mkdir()  # a swap killed between renames
    (tmp_path / f".epoch_2.new-{pid}-{'c' * 12}" / "a").write_text("new")
    (tmp_path / f".notes.txt.{pid}-{'d' * 12}.tmp.txt").write_text("half")
    (tmp_path / "notes.txt").write_text("mine")
    recover_all(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model", "epoch_2", "notes.txt"]
    assert listing(tmp_path / "epoch_2") == {"a": "new"}


def test_atomic_directory_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"), atomic_directory(tmp_path / "f"):
        pass
