"""The package's shape, measured from its source (issue 32's before/after table).

    python benchmarks/house.py                 # the working tree
    python benchmarks/house.py a25fd55^        # any commit: its xnetspace/ read through git archive
    python benchmarks/house.py --layers        # and each floor's modules, bottom up

Prints, for ``xnetspace/``: modules ("rooms") and lines, the search half's share of the lines,
intra-package imports (lazy ones inside functions included, as tests/test_imports.py counts them),
floors (the longest chain of imports plus one: each module sits above all it imports), cycles,
imports from ``xnetspace/model/`` to a module that itself reaches the model ("upward"), the
functions over 60 and over 100 lines with the longest six, and the modules that take the search's
``RunOptions`` whole (those that name it).
"""

from __future__ import annotations

import argparse
import ast
import io
import subprocess
import tarfile
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sources(rev: str | None) -> dict[str, str]:
    """Module name -> source text of every ``xnetspace/**/*.py``, at ``rev`` (None: the working tree)."""
    if rev is None:
        files = {p.relative_to(ROOT).as_posix(): p.read_text() for p in (ROOT / "xnetspace").rglob("*.py")}
    else:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "xnetspace"], capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            files = {
                m.name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile() and m.name.endswith(".py")
            }
    return {_module(path): text for path, text in files.items()}


def _module(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(modules: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body."""
    edges: dict[str, set[str]] = {}
    for name, text in modules.items():
        # a relative import counts from the package: the module itself for an __init__.py
        package = name.split(".") if any(m.startswith(name + ".") for m in modules) else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(text)):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    found.add(target)
        edges[name] = found
    return edges


def floor_of(edges: dict[str, set[str]]) -> dict[str, int]:
    """Each module's floor: 1 for a module that imports no package module, else one above the
    highest it imports."""

    @cache
    def floor(name: str) -> int:
        return 1 + max((floor(t) for t in edges[name]), default=0)

    return {n: floor(n) for n in edges}


def has_cycle(edges: dict[str, set[str]]) -> bool:
    state: dict[str, str] = {}

    def visit(node: str) -> bool:
        state[node] = "open"
        for nxt in edges[node]:
            if state.get(nxt) == "open" or (nxt not in state and visit(nxt)):
                return True
        state[node] = "done"
        return False

    return any(node not in state and visit(node) for node in list(edges))


def reaches(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def functions(modules: dict[str, str]) -> list[tuple[int, str]]:
    found = []
    for name, text in modules.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))  # type: ignore[operator]
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", help="a git commit (default: the working tree)")
    parser.add_argument("--layers", action="store_true", help="also print each floor's modules, bottom up")
    args = parser.parse_args()
    modules = sources(args.rev)
    edges = imports(modules)
    lines = {n: len(t.splitlines()) for n, t in modules.items()}
    search = sum(v for n, v in lines.items() if n.startswith("xnetspace.search"))
    model = {n for n in modules if n.startswith("xnetspace.model")}
    above = {n for n in modules if n not in model and reaches(edges, n) & model}
    upward = sorted(f"{n} -> {t}" for n in model for t in edges[n] & above)
    longest = functions(modules)
    options = sorted(n for n, t in modules.items() if "RunOptions" in t and not n.endswith("study"))
    total = sum(lines.values())
    print(f"modules: {len(modules)}, lines: {total}, search half: {search} ({search / total:.0%})")
    floors = floor_of(edges)
    print(f"imports: {sum(map(len, edges.values()))}, floors: {max(floors.values())}, cycle: {has_cycle(edges)}")
    print(f"model imports upward: {len(upward)} {upward}")
    print(f"functions over 60 lines: {sum(n > 60 for n, _ in longest)}, over 100: {sum(n > 100 for n, _ in longest)}")
    print("longest: " + ", ".join(f"{name.rsplit('.', 1)[-1]} {n}" for n, name in longest[:6]))
    print(f"modules naming RunOptions (besides study, where it is defined): {len(options)} {options}")
    if args.layers:
        for level in range(1, max(floors.values()) + 1):
            names = sorted(n.removeprefix("xnetspace.") for n, f in floors.items() if f == level)
            print(f"{level:>2}  " + ", ".join(names))


if __name__ == "__main__":
    main()
