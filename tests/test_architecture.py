"""The layout's rules (docs/ARCHITECTURE.md), checked on the source: what may import what, no
private helpers or modules across packages, no import cycles (imports inside functions count), no
module past the size a reader can hold, and an ``import llmri`` that stays light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "llmri"
#: The parts that know nothing of the API layer, the viewer, the notebook or the CLI.
INNER = ("store", "reducers", "backends", "readouts", "models", "frame", "interventions")
#: What those parts may never import: the API layer, the sources of frames built on it, and the apps.
OUTER = (
    "llmri.viewer",
    "llmri.commands",
    "llmri.cli",
    "llmri.notebook",
    "llmri.capture",
    "llmri.chatonly",
    "llmri.render",
    "llmri.serve",
    "llmri.study",
)
#: The one convenience a session offers from a room the store does not depend on, imported inside
#: the one method that needs it (never at import time): ``SessionReader.markers()`` (pure numpy over
#: what the session holds). ``SessionReader.show()`` goes through a hook llmri's package sets.
LAZY_FROM_STORE = {("llmri.store.base", "llmri.readouts.markers")}
#: The library's shared internals: private modules at the top that every room may import.
SHARED_INTERNALS = ("llmri._errors", "llmri._registry", "llmri._jsonsafe", "llmri._deprecated")
MAX_PY_LINES = 400
MAX_JS_LINES = 400


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """``(module, names, top_level)`` for every import in ``path`` that runs (not those under
    ``if TYPE_CHECKING:``), relative ones resolved; ``top_level``: executed at import time (not
    inside a function)."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    in_function: set[int] = set()
    typing_only: set[int] = set()  # under `if TYPE_CHECKING:`: read by type checkers, never run
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for b in node.body for n in ast.walk(b))
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
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
        if not (name == f"llmri.{part}" or name.startswith(f"llmri.{part}.")):
            continue
        for mod, _names, top in _imports(path):
            if not top and (name, mod) in LAZY_FROM_STORE:
                continue
            if any(mod == o or mod.startswith(o + ".") for o in OUTER):
                bad.append(f"{name} imports {mod}")
    assert not bad, bad


def test_store_depends_on_frames_only():
    allowed = ("llmri.store", "llmri.frame", "llmri._errors", "llmri._jsonsafe")
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


def test_no_private_module_imported_from_another_package():
    """A module named ``_x`` belongs to its package: ``llmri.a._x`` is imported only by modules of
    ``llmri.a`` (the top-level shared internals excepted), whatever the form of the import."""
    bad = []
    for name, path in MODULES.items():
        mine = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
        for mod, names, _top in _imports(path):
            for dep in [mod, *(f"{mod}.{n}" for n in names)]:
                if dep not in MODULES or dep in SHARED_INTERNALS:
                    continue
                leaf_private = [p for p in dep.split(".")[1:] if p.startswith("_") and not p.startswith("__")]
                if leaf_private and not (mine == dep.rsplit(".", 1)[0] or mine.startswith(dep.rsplit(".", 1)[0] + ".")):
                    bad.append(f"{name} imports {dep}")
    assert not bad, bad


def test_no_import_cycles():
    """No cycle among llmri's modules, imports inside functions included (a lazy import hides a
    cycle from the interpreter, not from a reader)."""
    graph = {
        name: {dep for mod, names, _top in _imports(path) for dep in _resolve(mod, names) if dep != name}
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


#: What ``import llmri`` must not load: the apps, and every heavy library a capture loads only when
#: it runs (each backend imports its engine inside the methods that need it).
HEAVY = (
    "llmri.viewer",
    "llmri.notebook",
    "llmri.commands",
    "torch",
    "transformers",
    "transformer_lens",
    "nnsight",
    "llama_cpp",
    "zarr",
    "fastapi",
    "anywidget",
    "httpx",
    "xarray",
)


def test_import_llmri_stays_light():
    code = "import json, sys, llmri; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert not heavy, heavy
    # and the lazy names still resolve
    code = "import llmri; print(llmri.show.__module__, llmri.view.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["llmri.notebook", "llmri.viewer.launch"]


def test_no_test_module_imports_another():
    """Tests live in folders mirroring src/llmri; what several share is in tests/*helpers*.py or
    llmri.testing, never in a test module (whose folder need not be on sys.path)."""
    tests = Path(__file__).resolve().parent
    bad = [
        f"{p.relative_to(tests)} imports {mod}"
        for p in tests.rglob("test_*.py")
        for mod, _names, _top in _imports_of_test(p)
        if mod.split(".")[0].startswith("test_")
    ]
    assert not bad, bad


def test_test_modules_have_unique_names():
    """The test folders are not packages, so pytest imports each module by its file name: two of the
    same name in different folders stop the whole run at collection ("import file mismatch")."""
    tests = Path(__file__).resolve().parent
    seen: dict[str, list[str]] = {}
    for p in tests.rglob("test_*.py"):
        seen.setdefault(p.name, []).append(str(p.relative_to(tests)))
    assert not [v for v in seen.values() if len(v) > 1], [v for v in seen.values() if len(v) > 1]


def _imports_of_test(path: Path) -> list[tuple[str, list[str], bool]]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[str, list[str], bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], True) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.append((node.module or "", [a.name for a in node.names], True))
    return out
