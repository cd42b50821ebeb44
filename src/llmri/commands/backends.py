"""``llmri backends``: which capture backends are installed and what each can capture."""

from __future__ import annotations

import argparse
import importlib.util

from ..backends import BACKENDS

_EXTRA = {
    "hf": None,
    "synthetic": None,
    "transformer-lens": "transformer_lens",
    "nnsight": "nnsight",
    "llama.cpp": "llama_cpp",
}
_PIP_EXTRA = {"llama.cpp": "llamacpp"}  # where the extra's name is not the backend's


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("backends", help="list capture backends and what each can capture")


def run(args: argparse.Namespace) -> int:
    print(f"{'backend':<18} {'installed':<10} signals")
    for name in BACKENDS.names():
        cls = BACKENDS.get(name)
        mod = _EXTRA.get(name)
        ok = mod is None or importlib.util.find_spec(mod) is not None
        extra = "" if ok else f"  (pip install 'llmri[{_PIP_EXTRA.get(name, name)}]')"
        print(f"{name:<18} {'yes' if ok else 'no':<10} {','.join(cls.provides)}{extra}")
    return 0
