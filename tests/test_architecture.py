"""The layout's rules (docs/ARCHITECTURE.md), checked on the source: what may import what, no
private helpers across packages, no import cycles, no module past the size a reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "llmri"
#: The parts that know nothing of the API layer, the viewer, the notebook or the CLI.
INNER = ("store", "reducers", "backends", "readouts")
#: What those parts may never import.
OUTER = ("llmri.viewer", "llmri.commands", "llmri.cli", "llmri.notebook", "llmri.capture")
#: The conveniences a session offers from rooms the store may not depend on, each imported inside
#: the one method that needs it (never at import time): ``SessionReader.markers()`` (pure numpy over
#: what the session holds) and ``SessionReader.show()`` (the notebook widget).
LAZY_FROM_STORE = {("llmri.store.base", "llmri.readouts.markers"), ("llmri.store.base", "llmri.notebook")}
MAX_PY_LINES = 400
MAX_JS_LINES = 400


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """``(module, names, top_level)`` for every import in ``path``, relative ones resolved;
    ``top_level``: executed at import time (not inside a function)."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    out = []
    for node in ast.walk(tree):
        top = id(node) not in in_function
        if isinstance(node, ast.Import):
            out += [(a.name, [], top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names], top))
    return out


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(mod: str, names: list[str]) -> list[str]:
    """The llmri modules an import statement loads: ``from llmri.x import y`` is ``llmri.x.y``
    when that is a module, else ``llmri.x``."""
    if not mod.startswith("llmri"):
        return []
    got = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES]
    return got or ([mod] if mod in MODULES else [])


@pytest.mark.parametrize("part", INNER)
def test_inner_parts_never_import_the_outer_layers(part):
    bad = []
    for name, path in MODULES.items():
        if not name.startswith(f"llmri.{part}"):
            continue
        for mod, _names, top in _imports(path):
            if not top and (name, mod) in LAZY_FROM_STORE:
                continue
            if any(mod == o or mod.startswith(o + ".") for o in OUTER):
                bad.append(f"{name} imports {mod}")
    assert not bad, bad


def test_store_depends_on_frames_only():
    allowed = ("llmri.store", "llmri.frame", "llmri._errors", "llmri.jsonsafe")
    bad = [
        f"{name} imports {mod}"
        for name, path in MODULES.items()
        if name.startswith("llmri.store")
        for mod, _names, top in _imports(path)
        if mod.startswith("llmri")
        and not any(mod == a or mod.startswith(a + ".") for a in allowed)
        and (top or (name, mod) not in LAZY_FROM_STORE)
    ]
    assert not bad, bad


def test_no_private_names_taken_from_another_package():
    """``from llmri.a.b import _x`` is fine in the modules of package ``llmri.a`` itself; from
    anywhere else (a subpackage included) it reaches into another room's privates. Modules named
    ``_x`` (``_errors``, ``_registry``) are the library's shared internals: their public names
    may be imported from anywhere."""
    bad = []
    for name, path in MODULES.items():
        for mod, names, _top in _imports(path):
            if not mod.startswith("llmri"):
                continue
            owner = mod if mod in MODULES and MODULES[mod].name == "__init__.py" else mod.rsplit(".", 1)[0]
            mine = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
            if mine == owner:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            bad += [f"{name}: from {mod} import {n}" for n in private]
    assert not bad, bad


def test_no_import_cycles_at_import_time():
    graph = {
        name: {dep for mod, names, top in _imports(path) if top for dep in _resolve(mod, names) if dep != name}
        for name, path in MODULES.items()
    }
    # a package's __init__ re-exporting its modules is not a cycle with them
    for name in graph:
        graph[name] = {d for d in graph[name] if not (MODULES[d].name == "__init__.py" and name.startswith(d + "."))}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep] if dep in stack else [node, dep])
            elif not state.get(dep):
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if not state.get(name):
            visit(name, [name])
    assert not cycles, cycles


def test_modules_stay_small():
    big = [
        f"{p.relative_to(SRC)}: {n}" for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_PY_LINES
    ]
    big += [
        f"{p.relative_to(SRC)}: {n}"
        for p in (SRC / "viewer_web").rglob("*.js")
        if (n := len(p.read_text().splitlines())) > MAX_JS_LINES
    ]
    assert not big, big


def test_no_import_cycles_in_the_viewer_counting_imports_inside_functions():
    """Within llmri.viewer, an import deferred into a function is still a dependency: two modules
    that import each other, one of them lazily, are one module split in two."""
    inside = {name: path for name, path in MODULES.items() if name.startswith("llmri.viewer.")}
    graph = {
        name: {d for mod, names, _top in _imports(path) for d in _resolve(mod, names) if d in inside and d != name}
        for name, path in inside.items()
    }
    for name in graph:
        graph[name] = {d for d in graph[name] if not (MODULES[d].name == "__init__.py" and name.startswith(d + "."))}
    cycles = []
    for name in sorted(graph):
        seen, todo = set(), list(graph[name])
        while todo:
            dep = todo.pop()
            if dep == name:
                cycles.append(name)
                break
            if dep not in seen:
                seen.add(dep)
                todo.extend(graph[dep])
    assert not cycles, f"modules on an import cycle: {cycles}"
