"""The names the 0.2 layout moved still work for one release, each with a DeprecationWarning that
names the new place, and each is the same object as the new one."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from llmri._deprecated import MOVED_MODULES

#: Each old path imported in a fresh interpreter of its own (one subprocess for all: a module
#: imported once is not imported, nor warned about, again): the warnings seen and whether it is the new module.
CHILD = """
import importlib, json, sys, warnings
out = {}
for old, new in json.loads(sys.argv[1]).items():
    for name in [m for m in sys.modules if m == old or m.startswith(old + ".")]:
        del sys.modules[name]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", DeprecationWarning)
        mod = importlib.import_module(old)
    out[old] = [[str(w.message) for w in seen], mod is importlib.import_module(new)]
print(json.dumps(out))
"""


def test_an_old_module_path_is_the_new_module_with_a_warning():
    got = json.loads(
        subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(MOVED_MODULES)], capture_output=True, text=True, check=True
        ).stdout
    )
    for old, new in MOVED_MODULES.items():
        messages, same = got[old]
        assert same, old
        assert f"{old} is deprecated and goes in the next release: use {new}" in messages, (old, messages)


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("llmri.backends.base", "Capture", "llmri.backends.base:Backend"),
        ("llmri.backends", "Capture", "llmri.backends.base:Backend"),
        ("llmri.models", "load_gguf", "llmri.backends.llamacpp:load_gguf"),
    ],
)
def test_an_old_name_is_the_new_object_with_a_warning(module, old, new):
    where, name = new.split(":")
    with pytest.warns(DeprecationWarning, match=f"{module}.{old} is deprecated .* use {where}.{name}"):
        got = getattr(importlib.import_module(module), old)
    assert got is getattr(importlib.import_module(where), name)
    with pytest.raises(AttributeError):
        _ = importlib.import_module(module).no_such_name
