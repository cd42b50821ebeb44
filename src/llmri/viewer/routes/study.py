"""A study's overview as JSON: the running statistics stored with it, per signal and layer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..._jsonsafe import json_safe
from . import State

router = APIRouter()


@router.get("/api/stores/{store_id}/study")
def study(state: State, store_id: str) -> Any:
    """``{"store", "signals", "layers", "n_sessions", "stats": {signal: {"count", "mean", "std",
    "p01", "p50", "p99": [per layer]}}}``: the norms' statistics of the study's sessions, as
    :func:`llmri.study.study_stats` reads them (the stored parts merged; NaN as ``null``). A store
    without study sessions answers ``n_sessions`` 0 and no signals (an unknown store: 404)."""
    from ...study.stats import study_stats

    e = state.store(store_id)
    study_sessions = [r for r in e.store.sessions() if isinstance(r.meta.get("study"), dict)]
    stats = study_stats(e.store) if study_sessions else None
    if stats is None:
        return {"store": e.id, "signals": [], "layers": [], "n_sessions": 0, "stats": {}}
    layers = list(study_sessions[0].layers)
    if len(layers) != stats.n_layers:
        layers = [str(i) for i in range(stats.n_layers)]
    return json_safe(
        {
            "store": e.id,
            "signals": stats.signals,
            "layers": layers,
            "n_sessions": len(study_sessions),
            "stats": stats.summary(),
        }
    )
