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
            # paired runs (docs/interventions.md): the baseline's id; whether it holds a patching sweep
            "baseline": str(meta.get("baseline") or "")[:MAX_META_CHARS],
            "patching": isinstance(meta.get("patching"), dict),
            **_origin(meta),
        }
    )
    return out


#: Bounds on what a session's summary carries of its free metadata (the list is sent every few seconds).
MAX_META_KEYS, MAX_META_CHARS = 20, 200


def _origin(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Where a session came from: a served request's ``client`` (the OpenAI ``user`` field) and
    ``request_id``, a study prompt's ``prompt_id`` and its free ``metadata`` (scalars, bounded)."""
    study = meta.get("study")
    study = study if isinstance(study, dict) else {}
    free = study.get("metadata")
    free = free if isinstance(free, dict) else {}
    metadata = {
        str(k)[:MAX_META_CHARS]: v if isinstance(v, bool | int | float) or v is None else str(v)[:MAX_META_CHARS]
        for k, v in list(free.items())[:MAX_META_KEYS]
        if v is None or isinstance(v, str | bool | int | float)
    }
    pid = study.get("id")
    return {
        "client": str(meta.get("client") or "")[:MAX_META_CHARS],
        "request_id": str(meta.get("request_id") or "")[:MAX_META_CHARS],
        "served": isinstance(meta.get("serve"), dict),
        "study": bool(study),
        "prompt_id": "" if pid is None else str(pid)[:MAX_META_CHARS],
        "metadata": metadata,
    }


def _fields(s: Mapping[str, Any]) -> dict[str, str]:
    """What a ``meta.KEY=VALUE`` filter compares with: the free metadata and the origin fields, as text."""
    out = {k: _text(v) for k, v in (s.get("metadata") or {}).items()}
    for k in ("client", "request_id", "prompt_id", "model", "backend", "status"):
        out[k] = str(s.get(k) or "")
    return out


def _text(v: Any) -> str:
    return "" if v is None else ("true" if v is True else "false" if v is False else str(v))


def _haystack(s: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """The text ``?q=`` searches: the title, every message and the prompt, the id and metadata values."""
    parts = [str(s.get("id", "")), str(s.get("title", "")), str(meta.get("prompt") or "")]
    for m in meta.get("messages") or []:
        if isinstance(m, dict):
            parts.append(str(m.get("content", "")))
    parts.extend(_fields(s).values())
    return "\n".join(parts).casefold()


def matches(s: Mapping[str, Any], meta: Mapping[str, Any], q: str, filters: Mapping[str, str]) -> bool:
    """Whether the session (its :func:`summary` ``s`` and ``meta``) passes a list query: ``q`` a
    case-insensitive substring of its text (:func:`_haystack`), and each ``filters`` key's value
    exactly equal to that field (booleans as ``true``/``false``)."""
    if filters:
        f = _fields(s)
        if any(k not in f or f[k] != v for k, v in filters.items()):
            return False
    return not q or q.casefold() in _haystack(s, meta)


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
