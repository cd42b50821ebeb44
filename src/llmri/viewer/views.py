"""The JSON the viewer answers with: a session's summary, and why two sessions cannot be compared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._jsonsafe import json_safe
from ..store import SessionReader


def _title(meta: Mapping[str, Any]) -> str:
    msgs = meta.get("messages") or []
    for m in reversed(msgs):
        if isinstance(m, dict) and m.get("role") == "user":
            return str(m.get("content", ""))[:120]
    return str(meta.get("prompt") or "")[:120]


def summary(store_id: str, r: SessionReader) -> dict[str, Any]:
    """One line of the session list: ids, status, shape, model, backend, reducer, title, and the
    readouts it holds (``"lens"``, ``"attention"``)."""
    meta = r.meta
    model = meta.get("model") or {}
    reducer = meta.get("reducer") or {}
    out: dict[str, Any] = json_safe(
        {
            "store": store_id,
            "id": r.id,
            "key": f"{store_id}/{r.id}",
            "status": r.status,
            "n_frames": len(r),
            "signals": r.signals,
            "n_layers": len(r.layers),
            "tile": list(r.tile),
            "chat_only": r.chat_only or not r.signals,
            "readouts": r.readouts,
            "model": model.get("name", "") if isinstance(model, dict) else str(model),
            "backend": meta.get("backend", ""),
            "reducer": reducer.get("kind", "") if isinstance(reducer, dict) else str(reducer),
            "created": meta.get("created", ""),
            "stop_reason": meta.get("stop_reason", ""),
            "title": _title(meta),
        }
    )
    return out


def _model(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta["model"]`` as a dict (a hand-made store may hold only a name there)."""
    model = meta.get("model")
    return model if isinstance(model, dict) else {"name": str(model)} if model else {}


def comparable(a: SessionReader, b: SessionReader) -> str:
    """Empty string if frames of ``a`` and ``b`` can be subtracted, else the reason why not (one line)."""
    ma, mb = a.meta, b.meta
    if not a.signals or not b.signals:
        return "a chat-only session has no frames to compare"
    mda, mdb = _model(ma), _model(mb)
    fa, fb = mda.get("fingerprint"), mdb.get("fingerprint")
    if not fa or fa != fb:
        na, nb = mda.get("name", "?"), mdb.get("name", "?")
        return f"different models ({na} {fa or 'no fingerprint'} vs {nb} {fb or 'no fingerprint'})"
    if (ma.get("reducer") or {}) != (mb.get("reducer") or {}):
        ka, kb = (ma.get("reducer") or {}).get("kind", "?"), (mb.get("reducer") or {}).get("kind", "?")
        return f"different reducers ({ka} vs {kb}, or different seed/tile/state): their pixels do not correspond"
    if set(a.signals) != set(b.signals):
        return f"different signals ({', '.join(a.signals)} vs {', '.join(b.signals)})"
    if a.tile != b.tile or len(a.layers) != len(b.layers):
        return "different tile shapes or layer counts"
    return ""
