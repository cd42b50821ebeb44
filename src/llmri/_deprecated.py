"""Deprecated aliases, kept for one release after a rename: old module paths (``llmri.decode``) and
old names in a module (``llmri.backends.base.Capture``) still work, with a DeprecationWarning
that names the new place. Nothing here is imported by the library itself."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

#: old module path -> new module path (the 0.2 layout: docs/ARCHITECTURE.md)
MOVED_MODULES = {
    "llmri.calibration": "llmri.capture.calibration",
    "llmri.codec": "llmri.capture.codec",
    "llmri.decode": "llmri.capture.decode",
    "llmri.framestream": "llmri.capture.framestream",
    "llmri.messages": "llmri.capture.messages",
    "llmri.progress": "llmri.capture.progressbar",
    "llmri.stepframes": "llmri.capture.frames",
    "llmri.stepreadouts": "llmri.capture.readouts",
    "llmri.wrapping": "llmri.models.wrapping",
    "llmri.placement": "llmri.models.placement",
    "llmri.backends.hf_hooks": "llmri.backends.hf.hooks",
    "llmri.backends.hf_layout": "llmri.backends.hf.layout",
    "llmri.backends._wrapped": "llmri.backends.wrapped",
    "llmri.backends.openai": "llmri.chatonly",
    "llmri.backends.openai.api": "llmri.chatonly.api",
    "llmri.backends.openai.chat": "llmri.chatonly.chat",
    "llmri.backends.openai.client": "llmri.chatonly.client",
    "llmri.backends.openai.errors": "llmri.chatonly.errors",
    "llmri.backends.openai.events": "llmri.chatonly.events",
    "llmri.backends.openai.rows": "llmri.chatonly.rows",
    "llmri.colormaps": "llmri.render.colormaps",
    "llmri.export": "llmri.render.export",
    "llmri.jsonsafe": "llmri._jsonsafe",
    "llmri.viewing": "llmri.viewer.launch",
}


def warn_moved(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated and goes in the next release: use {new}", DeprecationWarning, stacklevel=3)


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the new module (the same module object)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname == "llmri.backends.openai")

    def create_module(self, spec: Any) -> ModuleType:
        new = MOVED_MODULES[spec.name]
        warn_moved(spec.name, new)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        # the module is the new one, already executed; keep its own name and spec
        pass


def install_module_aliases() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())  # before the path finder: an old package path must not load its files twice


def renamed(module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for names that moved: ``{"Capture": "llmri.backends.base:Backend"}``."""

    def __getattr__(name: str) -> Any:
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        where, attr = target.split(":")
        warn_moved(f"{module}.{name}", f"{where}.{attr}")
        return getattr(importlib.import_module(where), attr)

    return __getattr__
