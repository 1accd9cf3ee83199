"""The README's examples work as written.

* Every ```python block runs (in a fresh namespace, in ``tmp_path``; the examples use tiny sizes). A
  block whose first line is ``# name.py`` is a file of the example, written to ``tmp_path`` for
  the other blocks to import. A block preceded by ``<!-- skip-test: reason -->`` is not run (none is
  today; the reason must be given).
* The examples import only public names: the ``__all__`` of ``slimkit``, ``slimkit.prune``,
  ``slimkit.quant``, ``slimkit.data``, ``slimkit.bench`` and ``slimkit.models``.
* Every ``slimkit <command>`` the README names exists in the CLI, and every ``](#anchor)`` link of
  README.md and docs/benchmarks.md points at a heading.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
import textwrap
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from slimkit import cli
from slimkit.models import _registry

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "docs" / "benchmarks.md"]
PUBLIC = (
    "slimkit",
    "slimkit.prune",
    "slimkit.quant",
    "slimkit.data",
    "slimkit.bench",
    "slimkit.models",
)
FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```$", re.M | re.S)
SKIP = re.compile(r"<!--\s*skip-test:\s*(\S.*?)\s*-->\s*$")
FILE_BLOCK = re.compile(r"\A# (\w+)\.py\b")


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    code: str
    skip_reason: str | None

    @property
    def module(self) -> str | None:
        """The module name of a file block (``# mynets.py`` on its first line), else None."""
        match = FILE_BLOCK.match(self.code)
        return match.group(1) if match else None


def code_blocks(text: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        line = text.count("\n", 0, match.start()) + 1
        code = textwrap.dedent(match.group(2))
        blocks.append(Block(line, match.group(1), code, skip.group(1) if skip else None))
    return blocks


BLOCKS = code_blocks(README.read_text())
PYTHON = [b for b in BLOCKS if b.lang == "python"]
RUNNABLE = [b for b in PYTHON if b.module is None]
FILES = [b for b in PYTHON if b.module is not None]


def test_the_readme_is_read():
    fences = re.findall(r"^[ \t]*```", README.read_text(), re.M)
    assert len(fences) == 2 * len(BLOCKS)  # every fence is closed (a stray one garbles the page)
    assert len(RUNNABLE) >= 5 and [b.module for b in FILES] == ["mynets"]
    assert any("make_dataset(" in b.code for b in RUNNABLE)  # the quick start's workflow
    assert all(b.skip_reason is None or len(b.skip_reason) > 10 for b in PYTHON)


@pytest.fixture()
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp_path as the working directory and on sys.path, holding the README's file blocks; models
    the examples register and modules they import from tmp_path are forgotten afterwards."""
    for block in FILES:
        (tmp_path / f"{block.module}.py").write_text(block.code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = dict(_registry._MODEL_SPECS)
    modules = set(sys.modules)
    yield tmp_path
    _registry._MODEL_SPECS.clear()
    _registry._MODEL_SPECS.update(specs)
    for name in set(sys.modules) - modules:
        if str(tmp_path) in str(getattr(sys.modules[name], "__file__", None) or ""):
            del sys.modules[name]


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"line{b.line}" for b in RUNNABLE])
def test_python_block_runs(block: Block, sandbox: Path):
    if block.skip_reason:
        pytest.skip(block.skip_reason)
    code = compile(block.code, f"README.md:{block.line}", "exec")
    exec(code, {"__name__": "__readme__"})


def imported(block: Block) -> Iterator[tuple[str, str | None]]:
    """(module, name) for every slimkit import of a block (name None for ``import module``)."""
    for node in ast.walk(ast.parse(block.code)):
        if isinstance(node, ast.Import):
            yield from ((a.name, None) for a in node.names if a.name.split(".")[0] == "slimkit")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "slimkit":
            yield from ((node.module or "", a.name) for a in node.names)


@pytest.mark.parametrize("block", PYTHON, ids=[f"line{b.line}" for b in PYTHON])
def test_examples_import_public_names_only(block: Block):
    for module, name in imported(block):
        assert module in PUBLIC, f"README.md:{block.line} imports the private module {module}"
        public = importlib.import_module(module).__all__
        assert name is None or name in public, f"README.md:{block.line}: {module}.{name}"


def test_the_text_names_public_paths():
    """`slimkit.prune.x` and the like in the prose name exported things, not private modules."""
    packages = "|".join(re.escape(p.split(".")[1]) for p in PUBLIC[1:])
    named = re.findall(rf"(?<![\w/.])slimkit\.({packages})\.(\w+)", README.read_text())
    assert len(named) > 5
    private = sorted(
        f"slimkit.{pkg}.{name}"
        for pkg, name in set(named)
        if name not in importlib.import_module(f"slimkit.{pkg}").__all__
    )
    assert private == []


def test_the_public_modules_define_what_they_export():
    for module in PUBLIC:
        package = importlib.import_module(module)
        assert [n for n in package.__all__ if not hasattr(package, n)] == [], module


def cli_commands() -> dict[str, set[str]]:
    """{command: its sub-commands (``datasets make``)} of the ``slimkit`` parser."""
    parser = cli._parser()
    commands = {}
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():
            nested = [a for a in sub._actions if a.choices and a.dest == "action"]
            commands[name] = set(nested[0].choices) if nested else set()
    return commands


def named_commands(text: str) -> set[tuple[str, str | None]]:
    """``slimkit X [Y]`` at a command position in code: bash lines and inline code spans."""
    code = [b.code for b in code_blocks(text) if b.lang in ("bash", "")]
    code += re.findall(r"`([^`]+)`", FENCE.sub("", text))
    found = set()
    for snippet in code:
        for match in re.finditer(
            r"(?:^|[\s/(`|;&])slimkit ((?:[a-z-]+\|)*[a-z-]+)(?: ([a-z-]+))?", snippet, re.M
        ):
            for command in match.group(1).split("|"):
                found.add((command, match.group(2)))
    return found


def test_every_cli_command_in_the_readme_exists(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    listed = re.search(r"\{([a-z,-]+)\}", capsys.readouterr().out)
    assert listed is not None
    commands = cli_commands()
    assert set(listed.group(1).split(",")) == set(commands)
    named = named_commands(README.read_text())
    assert {c for c, _ in named} >= {"train", "analyze", "prune", "quantize", "bench", "demo"}
    unknown = sorted(c for c, _ in named if c not in commands)
    assert unknown == [], f"the README names slimkit commands that do not exist: {unknown}"
    for command, action in named:
        if commands[command]:  # `slimkit datasets make`
            assert action in commands[command], f"slimkit {command} {action}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in ("L", "N"))
    return kept.replace(" ", "-")


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_links_point_at_headings(path: Path):
    texts = {p.resolve(): FENCE.sub("", p.read_text()) for p in DOCS}
    anchors = {p: {slug(h) for h in re.findall(r"^#+ (.+)$", t, re.M)} for p, t in texts.items()}
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", texts[path.resolve()]):
        file = (path.parent / target).resolve() if target else path.resolve()
        assert file in anchors, f"{path.name}: link to {target}"
        assert anchor in anchors[file], f"{path.name}: no heading for #{anchor} in {file.name}"


def test_the_checks_catch_mistakes():
    text = "Run `slimkit frobnicate x`.\n\n```bash\nslimkit datasets mak --task cls d\n```\n"
    assert named_commands(text) == {("frobnicate", "x"), ("datasets", "mak")}
    assert slug("Channel pruning of any nn.Module") == "channel-pruning-of-any-nnmodule"
    assert slug("How it compares (`benchmarks/quant_speed.py`)") == (
        "how-it-compares-benchmarksquant_speedpy"
    )
    blocks = code_blocks("<!-- skip-test: needs a GPU for this -->\n```python\nimport x\n```\n")
    assert blocks == [Block(2, "python", "import x\n", "needs a GPU for this")]
