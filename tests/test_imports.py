"""The import graph of src/slimkit: no cycles (function-level imports included), layers respected.

Run alone: ``python -m pytest tests/test_imports.py``. Imports under ``if TYPE_CHECKING:`` are left
out (they never run); every other ``import`` counts, wherever it is in the module.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "slimkit"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found, pending = [], [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def imported_modules(name: str, path: Path) -> set[str]:
    """The slimkit modules that ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        out.update(t for t in targets if t in MODULES and t != name)
    return out


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def test_the_graph_is_read():
    assert "slimkit.tasks.base" in GRAPH["slimkit.tasks.classifier"]
    assert "slimkit.prune" in GRAPH["slimkit.tasks.pruning"]  # a function-level import counts
    assert "slimkit.quant.runtime" in GRAPH["slimkit.quant.export"]  # a relative import


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(GRAPH) == []


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("slimkit.prune", ("slimkit.tasks", "slimkit.data", "slimkit.bench", "slimkit.slim")),
        ("slimkit.quant", ("slimkit.tasks", "slimkit.data", "slimkit.bench", "slimkit.prune")),
        ("slimkit.models", ("slimkit.tasks", "slimkit.data", "slimkit.prune", "slimkit.quant")),
        ("slimkit.data", ("slimkit.tasks", "slimkit.models", "slimkit.prune", "slimkit.quant")),
        ("slimkit.tasks", ("slimkit.bench", "slimkit.slim", "slimkit.cli", "slimkit.demo")),
    ],
)
def test_layers_import_nothing_backwards(package, forbidden):
    bad = {
        (name, target)
        for name, targets in GRAPH.items()
        if name == package or name.startswith(package + ".")
        for target in targets
        if target.startswith(forbidden)
    }
    assert bad == set()
