"""The package's import graph: no cycle and no private name across modules (read with ``ast``).

Every import counts, at the top of a module or inside a function, relative or absolute, so a
lazy import cannot hide a cycle. Implicit parent-package imports (importing ``a.b`` runs ``a``)
are not edges: every module would otherwise sit in a cycle with the package's ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "xnetspace"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """Absolute name of the module an ``ImportFrom`` reads from."""
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package(importer) else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str) -> list[tuple[str, str, int]]:
    """(module imported, name taken from it or "", line) for each intra-package import in ``name``."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    return imports_in(name, ast.walk(tree))  # ast.walk reaches imports inside functions and classes too


def imports_in(name: str, nodes) -> list[tuple[str, str, int]]:
    """As :func:`imports`, for the given AST nodes of module ``name`` only."""
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = resolve(name, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                # ``from . import x`` with x a module imports the module x, not a name of the package
                found.append((sub, "", node.lineno) if sub in MODULES else (source, alias.name, node.lineno))
    return [(mod, attr, line) for mod, attr, line in found if mod == PACKAGE or mod.startswith(PACKAGE + ".")]


def module_aliases(name: str) -> dict[str, str]:
    """Local names bound to package modules (``import xnetspace.layers as L``, ``from . import layers``)."""
    tree = ast.parse(MODULES[name].read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE) and alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = resolve(name, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    return aliases


def graph() -> dict[str, set[str]]:
    edges = {}
    for name in MODULES:
        targets = set()
        for mod, _, _ in imports(name):
            while mod not in MODULES and "." in mod:  # ``import xnetspace.x.y`` of a name: its module
                mod = mod.rsplit(".", 1)[0]
            if mod in MODULES and mod != name:
                targets.add(mod)
        edges[name] = targets
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle as [a, b, ..., a], or [] when the graph is acyclic (depth-first search)."""
    state, stack = {}, []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_scan_sees_the_package_and_lazy_imports():
    # Guards the checker itself: the package is found, and an import inside a function is an edge.
    assert {"xnetspace.spec", "xnetspace.model.network", "xnetspace.cli"} <= set(MODULES)
    assert "xnetspace.search" in MODULES and is_package("xnetspace.search")
    edges = graph()
    assert "xnetspace.spec" in edges["xnetspace.model.network"]
    assert any(m.startswith("xnetspace.search") for m in edges["xnetspace.cli"])  # cli imports them in commands


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_import_graph_has_no_cycle():
    edges = graph()
    cycle = find_cycle(edges)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_model_side_never_imports_the_search_side():
    edges = graph()
    for name, targets in edges.items():
        if name.startswith("xnetspace.search") or name in ("xnetspace.cli",):
            continue
        search = sorted(t for t in targets if t.startswith("xnetspace.search"))
        assert not search, f"{name} imports the search side: {search}"


def reached_from(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_model_package_imports_nothing_above_it():
    # The model half stands alone: no module of xnetspace.model imports, lazily or not, a module
    # that itself reaches the model (cost, memory, checkpoint, ... sit above it).
    edges = graph()
    model = {m for m in MODULES if m == "xnetspace.model" or m.startswith("xnetspace.model.")}
    above = {m for m in MODULES if m not in model and reached_from(edges, m) & model}
    assert "xnetspace.cost" in above and "xnetspace.memory" in above  # the check sees the walkers
    for name in sorted(model):
        upward = sorted(edges[name] & above)
        assert not upward, f"{name} imports modules above the model: {upward}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_crosses_a_module_border(name):
    problems = [
        f"line {line}: {attr} from {mod}"
        for mod, attr, line in imports(name)
        if attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__")) and mod != name
    ]
    aliases = module_aliases(name)
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            problems.append(f"line {node.lineno}: {aliases[node.value.id]}.{node.attr}")
    assert not problems, f"{name} uses private names of other modules: {problems}"


def build_command_modules() -> set[str]:
    """The package modules ``xnetspace build`` can import: cli's top-level imports, those inside
    ``build`` and inside the cli functions it calls, everything they import in turn, and the
    packages above each (importing ``a.b`` runs ``a``)."""
    tree = ast.parse(MODULES["xnetspace.cli"].read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    nodes = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    todo, seen = ["build"], set()
    while todo:
        function = functions[todo.pop()]
        seen.add(function.name)
        for node in ast.walk(function):
            nodes.append(node)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
                if node.func.id not in seen:
                    todo.append(node.func.id)
    edges, reached = graph(), set()
    todo = []
    for mod, _, _ in imports_in("xnetspace.cli", nodes):
        while mod not in MODULES and "." in mod:
            mod = mod.rsplit(".", 1)[0]
        todo.append(mod)
    while todo:
        mod = todo.pop()
        if mod in reached:
            continue
        reached.add(mod)
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))] + sorted(edges[mod])
    return reached


def test_build_command_never_imports_the_search_side():
    reached = build_command_modules()
    assert {"xnetspace.model.network", "xnetspace.photo", "xnetspace.memory", "xnetspace.timing"} <= reached
    search = sorted(m for m in reached if m.startswith("xnetspace.search"))
    assert not search, f"xnetspace build imports the search side: {search}"
