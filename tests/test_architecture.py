"""The package's folders are its architecture (ARCHITECTURE.md): imports run one way, and there is no circle.

Every import counts, also the ones inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "autopod"

# room -> the rooms it may import (besides itself). The entry points (cli, launch) may import anything.
ALLOWED = {
    "core": set(),
    "runpod": {"core"},
    "tunnels": {"core", "runpod"},
    "models": {"core", "runpod"},
    "comfy": {"core", "runpod", "tunnels", "models"},
    "sim": {"core", "tunnels", "models"},
    "tasks": {"core", "runpod", "tunnels", "models", "comfy", "sim"},
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of everything ``name`` imports, relative imports resolved."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from . import chain` imports a module
    return found


MODS = modules()
GRAPH = {name: {m for m in imports_of(name, path) if m in MODS and m != name} for name, path in MODS.items()}


def room(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "entry"


def test_every_module_is_in_a_room():
    loose = sorted(n for n in MODS if room(n) == "entry" and n not in
                   {"autopod", "autopod.__main__", "autopod.cli", "autopod.launch", "autopod.warmstart"})
    assert not loose, f"modules outside the rooms of ARCHITECTURE.md: {loose}"


@pytest.mark.parametrize("name", sorted(MODS))
def test_imports_run_one_way(name):
    here = room(name)
    if here == "entry":
        return
    wrong = sorted(m for m in GRAPH[name] if room(m) not in ALLOWED[here] | {here, "entry"} or
                   (room(m) == "entry" and m != "autopod"))
    assert not wrong, f"{name} ({here}) imports {wrong}; {here} may import {sorted(ALLOWED[here]) or 'only itself'}"


def test_no_import_circle():
    """Tarjan's strongly connected components over every import, lazy ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package imported by its own module is not a circle of code
            if len([c for c in comp if MODS[c].name != "__init__.py"]) > 1:
                circles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_only_the_adapter_imports_the_runpod_sdk():
    users = sorted(n for n, p in MODS.items() if any(m == "runpod" or m.startswith("runpod.")
                                                     for m in imports_of(n, p)))
    assert users == ["autopod.runpod.api"]


def test_architecture_md_names_every_room():
    text = (PKG.parent / "ARCHITECTURE.md").read_text()
    for r in ALLOWED:
        assert f"`autopod/{r}/`" in text, r
