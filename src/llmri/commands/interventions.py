"""``llmri capture``'s intervention flags: ``--steer FILE@LAYERS[:SCALE]``, ``--ablate SIGNAL@LAYERS[:NEURONS]``
and ``--interventions FILE.json`` (records as a session's meta holds them), read into the records
:func:`llmri.steer` / :func:`llmri.ablate` make."""

from __future__ import annotations

import argparse
from typing import Any

from .._errors import CaptureError
from .options import read_json


def add_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--steer",
        action="append",
        default=None,
        metavar="FILE@LAYERS[:SCALE]",
        help="add a direction (a .npy of d_model values, or one row per layer; or a saved direction, .gguf control "
        "vector or .safetensors, whose LAYERS default to its own: FILE@:SCALE) to resid at LAYERS (12, 10-14 or "
        "3,5) of the generated positions, times SCALE (default 1); repeatable",
    )
    p.add_argument(
        "--ablate",
        action="append",
        default=None,
        metavar="SIGNAL@LAYERS[:NEURONS]",
        help="zero a signal's output at LAYERS (mlp@17), or only NEURONS (resid@8:42,100); repeatable",
    )
    p.add_argument(
        "--interventions",
        dest="interventions_file",
        default=None,
        metavar="FILE.json",
        help="intervention records as JSON (a list, as `llmri info --json` shows a session's meta['interventions'])",
    )


def parse_layers(text: str) -> list[int]:
    """``12``, ``10-14`` (inclusive) or ``3,5,7``."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise CaptureError(f"layers must look like 12, 10-14 or 3,5,7, got {text!r}") from None
    return out


def parse_steer(text: str, flag: str = "--steer") -> Any:
    """``FILE@LAYERS[:SCALE]`` as a :func:`llmri.steer` record; ``flag`` names the option in an error
    (``llmri serve --variant NAME=FILE@LAYERS:SCALE`` reads the same)."""
    import numpy as np

    from ..interventions import steer

    file, at, rest = text.rpartition("@")
    if not at or not file:
        raise CaptureError(f"{flag} takes FILE@LAYERS[:SCALE], got {text!r}")
    layers, _, scale = rest.partition(":")
    try:
        value = float(scale) if scale else 1.0
    except ValueError:
        raise CaptureError(f"{flag}: the scale must be a number, got {scale!r}") from None
    if file.lower().endswith((".gguf", ".safetensors")):  # a saved Direction: its own layers unless given
        from ..interventions import load_direction

        return steer(load_direction(file), parse_layers(layers) if layers else None, scale=value)
    try:
        vector = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CaptureError(f"{flag}: cannot read {file} as a .npy array ({exc})") from None
    return steer(vector, parse_layers(layers), scale=value)


def parse_ablate(text: str) -> Any:
    from ..interventions import ablate

    signal, at, rest = text.partition("@")
    if not at:
        raise CaptureError(f"--ablate takes SIGNAL@LAYERS[:NEURONS], got {text!r}")
    layers, _, neurons = rest.partition(":")
    return ablate(parse_layers(layers), signal, neurons=parse_layers(neurons) if neurons else None)


def read_file(path: str) -> list[Any]:
    from ..interventions import as_records

    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("meta"), dict):
        data = data["meta"]  # what `llmri info --json` prints
    if isinstance(data, dict) and "interventions" in data:
        data = data["interventions"]  # a session's meta
    return list(as_records(data))


def options(args: argparse.Namespace) -> dict[str, Any]:
    """``{"interventions": [...]}`` from the flags, in the order: file, --steer, --ablate; ``{}`` for none."""
    records: list[Any] = []
    if getattr(args, "interventions_file", None):
        records += read_file(args.interventions_file)
    records += [parse_steer(x) for x in getattr(args, "steer", None) or []]
    records += [parse_ablate(x) for x in getattr(args, "ablate", None) or []]
    return {"interventions": records} if records else {}
