"""The package has no import cycles, counting imports inside functions too: a module that
needs another at call time still depends on it, and a cycle means two modules that cannot be
understood (or split) apart. ``from pkg import sub`` depends on the submodule ``pkg.sub``."""

from __future__ import annotations

import ast
from pathlib import Path

import lensworks

ROOT = Path(lensworks.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = ("lensworks",) + path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name in mods)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
            deps.update(subs)
            if len(subs) < len(node.names) and base in mods:
                deps.add(base)
    deps.discard(name)
    return deps


def import_cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert import_cycles() == []


def test_the_detector_sees_a_cycle(tmp_path, monkeypatch):
    """Planted: two modules importing each other inside functions are a cycle."""
    pkg = tmp_path / "lensworks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from lensworks import b\n")
    (pkg / "b.py").write_text("def g():\n    from lensworks.a import f\n")
    (pkg / "c.py").write_text("from lensworks import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    assert import_cycles() == [["lensworks.a", "lensworks.b"]]


def test_the_model_package_does_not_import_the_analyses_or_the_zoo():
    """lensworks.model is the base layer: everything imports it, it imports none of them."""
    mods = _modules()
    above = ("lensworks.circuits", "lensworks.geometry", "lensworks.probes", "lensworks.report", "lensworks.zoo",
             "lensworks.cli", "lensworks.plotting")
    for name, path in mods.items():
        if name.startswith("lensworks.model"):
            bad = [d for d in _imports(name, path, mods) if d.startswith(above)]
            assert not bad, (name, bad)
