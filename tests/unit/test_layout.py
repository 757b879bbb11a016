"""The house rules of guard/: no import cycles, lower layers never import upper ones, every module says
what it owns, no function runs past ~60 lines without a reason beside it, and docs/ARCHITECTURE.md
lists every module. Read from the source with `ast`, so nothing here depends on what is installed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUARD = ROOT / "guard"
# Low to high: a module may import its own layer or lower ones, never a higher one.
LAYERS = [
    {"guard.errors", "guard.limits", "guard.plugins", "guard._moved"},
    {"guard.models"},
    {"guard.policy"},
    {"guard.method"},
    {"guard.store"},
    {"guard.compiler", "guard.check"},
    {"guard.onnx", "guard.scanning"},
    {"guard.eval"},
    {"guard.serve"},
    {"guard.cli"},
]
LONG_FUNCTION = 60  # lines; a longer one carries a "# long: why" comment right after its docstring


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(GUARD.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The guard modules `name` imports, at module level or inside functions (both can cycle at run
    time); `from pkg import mod` counts as importing pkg.mod when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("guard"):
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("guard"))
    found.discard(name)
    return {dep for dep in found if dep in known}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layer_of(name: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if any(name == top or name.startswith(top + ".") for top in layer):
            return rank
    return -1  # guard itself (the package's API) sits above everything; checked apart


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def package_edges(graph):
    """Module arrows that cross packages: (importer, imported), the package itself excluded, since a
    package's __init__ re-exports its own modules."""
    for name, deps in graph.items():
        for dep in deps:
            if name != "guard" and not dep.startswith(name + ".") and not name.startswith(dep + "."):
                yield name, dep


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    # A package's __init__ importing its own modules, which import the package back for a sibling,
    # is not a cycle in the code's layering; every other loop is.
    inside = {
        n: {d for d in deps if not (n.startswith(d + ".") and modules()[d].name == "__init__.py")}
        for n, deps in graph.items()
    }
    assert cycles(inside) == []


def test_every_module_belongs_to_a_layer():
    assert [name for name in modules() if name != "guard" and layer_of(name) < 0] == []


def test_lower_layers_never_import_upper_ones():
    graph = import_graph()
    upward = [f"{a} -> {b}" for a, b in package_edges(graph) if layer_of(a) < layer_of(b)]
    assert upward == []


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("guard.policy.loading") < layer_of("guard.check.engine")
    assert list(package_edges({"guard.policy.loading": {"guard.check.engine"}})) == [
        ("guard.policy.loading", "guard.check.engine")
    ]


def test_every_module_has_a_docstring():
    missing = []
    for name, path in modules().items():
        if ".migrations.versions." in name:  # Alembic revisions say what they do in their own docstring form
            continue
        if not ast.get_docstring(ast.parse(path.read_text())):
            missing.append(name)
    assert missing == []


def long_functions() -> list[str]:
    found = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                # the reason sits between the def and two lines past the docstring (or first statement)
                first = node.body[0]
                head = "\n".join(lines[node.lineno - 1 : first.end_lineno + 2])
                if length > LONG_FUNCTION and "# long:" not in head:
                    found.append(f"{name}.{node.name} ({length} lines)")
    return found


def test_no_function_runs_long_without_a_reason():
    assert long_functions() == []


def test_architecture_lists_every_module():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    listed = set(re.findall(r"`(guard/[\w/]+\.py)`", text))
    expected = {
        str(path.relative_to(ROOT))
        for name, path in modules().items()
        if ".migrations.versions" not in name and path.name != "__main__.py"
    }
    assert sorted(expected - listed) == []
    assert sorted(p for p in listed - expected if not (ROOT / p).exists()) == []
