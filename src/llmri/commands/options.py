"""Command-line flags built from the settings table (:mod:`llmri.settings`): each flag's default and
help come from the one row that defines the option, so ``--help`` shows the library's defaults."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._errors import CaptureError
from ..settings import DEFAULTS, fields


def _row(name: str) -> Any:
    for f in fields():
        if f.name == name:
            return f
    raise KeyError(name)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def described(name: str, default: Any = None) -> str:
    """The table's help for ``name`` with the default a user gets (the table's unless given)."""
    f = _row(name)
    value = f.default if default is None else default
    shown = "none" if value is None else ",".join(value) if isinstance(value, tuple) else value
    if value in (None, ()) or isinstance(value, bool):
        return f.metadata["help"]
    return f"{f.metadata['help']} (default {shown})"


def add_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, names: Iterable[str], **types: Any) -> None:
    """One flag per option in ``names``: ``--max-new-tokens`` for ``max_new_tokens``, typed by its
    default (a bool is a switch, a tuple a repeatable flag) unless ``types`` says (``tile=str``)."""
    for name in names:
        f = _row(name)
        default = getattr(DEFAULTS, name)
        kw: dict[str, Any] = {"dest": name, "default": default, "help": described(name)}
        if f.metadata.get("metavar"):
            kw["metavar"] = f.metadata["metavar"]
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if isinstance(default, bool):
            kw.pop("metavar", None)
            kw["action"] = "store_true"
        elif isinstance(default, tuple):
            kw["action"], kw["default"] = "append", None
        elif name in types:
            kw["type"] = types[name]
        elif isinstance(default, (int, float)):
            kw["type"] = type(default)
        p.add_argument(flag(name), **kw)


def add_attention(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--attention [K|full]``: ``attention`` and ``attention_k`` in one flag."""
    p.add_argument(
        "--attention",
        nargs="?",
        const=str(DEFAULTS.attention_k),
        default=None,
        metavar="K|full",
        help=f"{_row('attention').metadata['help']}: the top K attended positions per head "
        f"(default {DEFAULTS.attention_k}), or full rows",
    )


def attention_options(value: str | None) -> dict[str, Any]:
    """What ``--attention [K|full]`` sets."""
    if value is None:
        return {}
    if value != "full" and not value.isdigit():
        raise CaptureError(f"--attention takes a whole number K or 'full', got {value!r}")
    return {"attention": True, "attention_k": value if value == "full" else int(value)}


def collect(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options ``args`` holds for ``names`` (a flag left out keeps the table's default)."""
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return out


def read_json(path: str) -> Any:
    """A JSON file's value; a missing or unreadable file is one line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CaptureError(f"{path}: not a JSON file ({exc})") from None
