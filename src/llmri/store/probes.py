"""A session's direction probes (docs/FORMAT.md, "Probes"): which it holds, from its meta, the arrays
each is stored as (``probes/{name}/cosine`` and ``/projection``, float32 ``[T, L]``), a frame's rows in
them, and :class:`ProbeTrace`, what :meth:`SessionReader.probe` returns. numpy and the meta only:
every store shares it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import StoreError
from ..frame import Frame, ProbeRow
from .layout import LAYER

#: What each probe stores per token and layer (float32; NaN at a layer the direction has no vector for).
PROBE_FIELDS = ("cosine", "projection")


def probe_records(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of the probes a session holds (``meta["probes"]``; none: ``[]``)."""
    recs = meta.get("probes")
    return [r for r in recs if isinstance(r, dict)] if isinstance(recs, list) else []


def probe_names(meta: dict[str, Any]) -> list[str]:
    """The names of the probes a session holds."""
    return [str(r.get("name")) for r in probe_records(meta)]


def probe_paths(meta: dict[str, Any]) -> dict[str, tuple[type, tuple[int, ...], tuple[str, ...]]]:
    """``{path: (dtype, row shape, row axes)}`` of every probe array, ``probes/{name}/{field}``."""
    row = (len(meta.get("layers") or []),)
    return {f"probes/{n}/{f}": (np.float32, row, (LAYER,)) for n in probe_names(meta) for f in PROBE_FIELDS}


def probe_problem(frame: Frame, names: list[str], n_layers: int) -> str:
    """What keeps ``frame`` from fitting a session holding the probes ``names``, or ``""``."""
    rows = frame.probes or {}
    for name in names:
        row = rows.get(name)
        if row is None:
            return f"frame {frame.index} has no row of probe {name}"
        if any(np.shape(getattr(row, f)) != (n_layers,) for f in PROBE_FIELDS):
            return f"frame {frame.index}: probe {name}'s row is not one value per layer ({n_layers})"
    return ""


def probe_rows(frame: Frame, names: list[str]) -> dict[str, Any]:
    """``{path: row}`` of ``frame`` in each probe array."""
    rows = frame.probes or {}
    return {f"probes/{n}/{f}": np.asarray(getattr(rows[n], f), dtype=np.float32) for n in names for f in PROBE_FIELDS}


def stack_probe(rows: list[ProbeRow], n_layers: int) -> dict[str, np.ndarray]:
    """Per-position rows as arrays ``{field: float32 [T, L]}``."""
    return {
        f: np.stack([np.asarray(getattr(r, f), np.float32) for r in rows])
        if rows
        else np.zeros((0, n_layers), np.float32)
        for f in PROBE_FIELDS
    }


@dataclass
class ProbeTrace:
    """One direction probe over a session's positions (:meth:`SessionReader.probe`).

    ``cosine`` / ``projection`` float32 ``[T, L]``: at each token and layer of the session, the cosine
    of the signal's full vector and the direction, and its dot with the unit direction (NaN at a
    layer the direction has no vector for); ``layers``: the session's layer names; ``record``: the
    probe's record in the session meta (signal, the direction's layers, ``d_model``, fingerprint,
    norms, ``sha256``, provenance and vectors)."""

    name: str
    record: dict[str, Any]
    layers: list[str]
    cosine: np.ndarray
    projection: np.ndarray

    def __len__(self) -> int:
        return int(self.cosine.shape[0])

    @property
    def signal(self) -> str:
        return str(self.record.get("signal", "resid"))

    def __repr__(self) -> str:
        probed = int(np.isfinite(self.projection).any(0).sum()) if len(self) else 0
        return f"<ProbeTrace {self.name}: {len(self)} tokens x {probed} of {len(self.layers)} layers, {self.signal}>"


def trace_of(meta: dict[str, Any], name: str, arrays: dict[str, np.ndarray], where: str) -> ProbeTrace:
    """A :class:`ProbeTrace` of probe ``name`` from its record in ``meta`` and its ``arrays``."""
    check_probe_name(meta, name, where)
    rec = next(r for r in probe_records(meta) if r.get("name") == name)
    return ProbeTrace(name, dict(rec), [str(x) for x in meta.get("layers") or []], **arrays)


def check_probe_name(meta: dict[str, Any], name: str, where: str) -> None:
    """Raise StoreError (one line) unless the session holds probe ``name``."""
    if name not in probe_names(meta):
        have = ", ".join(probe_names(meta)) or "none"
        raise StoreError(f"{where}: no probe {name!r:.80} (this session has: {have}; capture with probes=[...])")
