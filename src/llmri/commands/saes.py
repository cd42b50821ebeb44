"""``--sae PATH`` (repeatable), ``--sae-k K`` and ``--sae-labels FILE`` for ``llmri capture`` and
``llmri view``'s live chat: the SAEs read (with their labels) before any model loads."""

from __future__ import annotations

import argparse
from typing import Any

from .._errors import CaptureError
from ..settings import DEFAULTS
from .options import described


def add_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--sae",
        dest="sae_paths",
        action="append",
        default=None,
        metavar="PATH",
        help="record this sparse autoencoder's features of every token (a SAELens, Gemma Scope or sparsify "
        "directory or file; docs/sae.md); repeatable",
    )
    p.add_argument("--sae-k", type=int, default=None, metavar="K", help=described("sae_k"))
    p.add_argument(
        "--sae-labels",
        action="append",
        default=None,
        metavar="FILE",
        help="the features' labels (Neuronpedia's export or {index: text} JSON), one per --sae in order",
    )


def options(args: argparse.Namespace) -> dict[str, Any]:
    """``{"saes": [SAE, ...], "sae_k": K}`` from the flags (``{}`` without ``--sae``); the SAEs are
    read now, so a bad file is one line before the model loads."""
    paths = getattr(args, "sae_paths", None) or []
    labels = getattr(args, "sae_labels", None) or []
    k = getattr(args, "sae_k", None)
    if not paths:
        if labels or k is not None:
            raise CaptureError("--sae-k and --sae-labels go with --sae PATH")
        return {}
    if labels and len(labels) != len(paths):
        raise CaptureError(f"give one --sae-labels per --sae ({len(paths)} SAEs, {len(labels)} label files)")
    from ..readouts.sae import load_sae

    saes = [load_sae(p, labels=labels[i] if labels else None) for i, p in enumerate(paths)]
    return {"saes": saes, "sae_k": DEFAULTS.sae_k if k is None else k}


def describe(meta: dict[str, Any]) -> list[str]:
    """One line per SAE a session records (``llmri info``)."""
    sae = meta.get("sae")
    if not isinstance(sae, dict):
        return []
    out = []
    for r in sae.get("saes") or []:
        if not isinstance(r, dict):
            continue
        site = f"{r.get('signal')} {r.get('layer')}"
        arch = str(r.get("architecture", "?")) + (f" k={r['k']}" if r.get("k") else "")
        n_labels = len(r.get("labels") or {})
        out.append(
            f"{r.get('name')}: {arch} {r.get('d_in')}->{r.get('d_sae')} reads {site}, top {sae.get('k')} per token, "
            f"{n_labels} labels ({r.get('format')}: {r.get('path')}; sha256 {str(r.get('sha256', ''))[:12]})"
        )
    return out
