"""``llmri inspect --model SPEC``: what llmri will hook in a model, per signal and layer."""

from __future__ import annotations

import argparse
import re
from typing import Any

from .._errors import CaptureError

_SIGNALS = ("resid", "attn", "mlp")


def parse_hook_points(text: str) -> dict[str, str]:
    """``resid=model.layers.{i},mlp=model.layers.{i}.mlp`` as ``{signal: pattern}`` (argparse type)."""
    out: dict[str, str] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        sig, eq, path = item.partition("=")
        if not eq or not path.strip() or sig.strip() not in _SIGNALS:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected SIGNAL=PATH with SIGNAL one of {', '.join(_SIGNALS)}, "
                "e.g. mlp=model.layers.{i}.mlp"
            )
        out[sig.strip()] = path.strip()
    if not out:
        raise argparse.ArgumentTypeError("no SIGNAL=PATH given")
    return out


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inspect",
        help="show which modules llmri hooks in a model",
        description="Load a model and print, per signal, the module each layer records (compact when every "
        "layer follows one pattern), without generating anything.",
    )
    p.add_argument("--model", default=None, metavar="SPEC", help="model dir, .gguf file or hub id (default: bundled)")
    p.add_argument("--backend", default=None, metavar="NAME", help="capture backend (see `llmri backends`)")
    p.add_argument("--signals", default=None, help="comma-separated subset of resid,attn,mlp (default: all it has)")
    p.add_argument(
        "--hook-points",
        type=parse_hook_points,
        default=None,
        metavar="SIG=PATH,...",
        help="name the module per signal, {i} for the layer: resid=model.layers.{i},mlp=model.layers.{i}.mlp",
    )
    return p


def _ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    out: list[str] = []
    start = prev = layers[0]
    for i in [*layers[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(out)


def group_paths(paths: list[str | None], classes: list[str] | None = None) -> list[tuple[str, str, list[int]]]:
    """Consecutive layers' modules as ``(pattern, class, layers)`` rows: layer ``i``'s index in
    its path becomes ``{i}``, so one row covers every layer that follows one pattern."""
    rows: dict[tuple[str, str], list[int]] = {}
    for i, path in enumerate(paths):
        pattern = "(none: zeros)" if path is None else re.sub(rf"(?<=\.){i}(?=\.|$)", "{i}", path, count=1)
        cls = (classes[i] if classes else "") or ""
        rows.setdefault((pattern, cls), []).append(i)
    return [(pat, cls, layers) for (pat, cls), layers in rows.items()]


def describe(capture: Any) -> list[str]:
    """The lines ``llmri inspect`` prints for a built capture backend."""
    modules = capture.signal_modules
    root = capture.torch_module()
    lines = [f"layers: {capture.n_layers}  d_model: {capture.d_model}  backend: {capture.name}"]
    for sig in capture.signals:
        paths = modules.get(sig)
        if not paths:
            lines.append(f"{sig:<6} (the backend does not say)")
            continue
        classes = None
        if root is not None:
            classes = []
            for p in paths:
                try:
                    classes.append(type(root.get_submodule(p)).__name__ if p else "")
                except AttributeError:
                    classes.append("")
        for j, (pattern, cls, layers) in enumerate(group_paths(paths, classes)):
            which = "all layers" if len(layers) == len(paths) else f"layers {_ranges(layers)}"
            label = sig if j == 0 else ""
            lines.append(f"{label:<6} {pattern:<44} {cls:<28} {which}".rstrip())
    return lines


def run(args: argparse.Namespace) -> int:
    from ..capture.resolve import as_model, backend_for

    model = as_model(args.model)
    name, cls = backend_for(model, args.backend)
    if args.hook_points is not None and not cls.supports_hook_points:
        raise CaptureError(f"backend {name!r} does not take --hook-points (the hf and nnsight backends do)")
    extra = {} if args.hook_points is None else {"hook_points": args.hook_points}
    capture = cls(model, args.signals, **extra)
    try:
        describe_model = getattr(model, "describe", None)
        info = describe_model() if callable(describe_model) else {}
        print(f"model: {info.get('name') or type(model).__name__}  ({info.get('architecture', '?')})")
        for line in describe(capture):
            print(line)
    finally:
        capture.close()
    return 0
