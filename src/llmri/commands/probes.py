"""``--probe FILE[@LAYERS]`` (repeatable) for ``llmri capture``: a saved direction (``.gguf``,
``.safetensors``) or a ``.npy`` vector whose cosine and projection every token records, and the
lines ``llmri info`` shows for a session's probes (docs/interventions.md, "Watching a direction")."""

from __future__ import annotations

import argparse
from typing import Any

from .._errors import CaptureError


def add_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--probe",
        dest="probe_files",
        action="append",
        default=None,
        metavar="FILE[@LAYERS]",
        help="record each token's cosine and projection on a direction (a saved .gguf / .safetensors direction, at "
        "its own layers; or a .npy of d_model values, or one row per layer, at every layer) at LAYERS (12, 10-14 or "
        "3,5) if given; named by the file; repeatable",
    )


def parse_probe(text: str) -> Any:
    """A path (read when the capture opens) or, with ``@LAYERS``, a named Direction at those layers."""
    from pathlib import Path

    import numpy as np

    from ..interventions import Direction, Vector
    from ..readouts.probes import read_probe
    from .interventions import parse_layers

    file, at, layers = text.rpartition("@") if "@" in text else (text, "", "")
    if not file:
        raise CaptureError(f"--probe takes FILE[@LAYERS], got {text!r}")
    if not at:
        return file
    chosen = parse_layers(layers)
    d = read_probe(file)
    if isinstance(d, Direction):
        return d.select(chosen).named(Path(file).stem)
    if d.ndim == 2 and d.shape[0] != len(chosen):
        raise CaptureError(f"--probe {text}: {d.shape[0]} rows for {len(chosen)} layers (one row per layer)")
    rows = np.broadcast_to(d, (len(chosen), d.shape[-1])) if d.ndim == 1 else d
    return Direction(Vector.of(np.ascontiguousarray(rows)), tuple(chosen), provenance={"name": Path(file).stem})


def options(args: argparse.Namespace) -> dict[str, Any]:
    """``{"probes": [...]}`` from the flags (``{}`` without ``--probe``); every file is read now, so a bad
    one is one line before the model loads."""
    from ..capture.probes import read_probes

    files = getattr(args, "probe_files", None) or []
    if not files:
        return {}
    probes = [parse_probe(x) for x in files]
    read_probes(probes)
    return {"probes": probes}


def describe(meta: dict[str, Any]) -> list[str]:
    """One line per probe a session records (``llmri info``)."""
    out = []
    for r in meta.get("probes") or []:
        if not isinstance(r, dict):
            continue
        layers = [int(x) for x in r.get("layers") or []]
        run = len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1))
        span = f"{layers[0]}-{layers[-1]}" if run else ",".join(map(str, layers))
        norms = [float(x) for x in r.get("norms") or [0.0]]
        method = (r.get("provenance") or {}).get("method") or "?"
        out.append(
            f"{r.get('name')}: {r.get('signal')} layers {span} d_model {r.get('d_model')} |d| {min(norms):.3g}"
            + (f"..{max(norms):.3g}" if max(norms) != min(norms) else "")
            + f" ({method}; model {r.get('model') or 'any'}; sha256 {str(r.get('sha256', ''))[:12]})"
        )
    return out
