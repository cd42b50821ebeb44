"""Stores and sessions as JSON: the lists, one session's metadata, its token table, and ``/api/compare``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from ..._errors import LlmriError
from ..._jsonsafe import json_safe
from ...render.grid import grid_shape
from ..state import BadRequest, NotFound
from ..views import comparable, matches, summary
from . import State

router = APIRouter()

#: Bounds on a session list's query: the search text, the number of ``meta.KEY`` filters, a key's and a value's length.
MAX_Q, MAX_FILTERS, MAX_KEY, MAX_VALUE = 200, 8, 64, 200
#: Query parameters a list accepts besides ``q`` and ``meta.KEY`` (``token``: the launch token).
_OTHER_PARAMS = frozenset({"token"})

#: ``?q=``: a case-insensitive substring of the title, the prompt text, the id or a metadata value.
Search = Annotated[str, Query(max_length=MAX_Q)]


def _filters(request: Request) -> dict[str, str]:
    """The ``meta.KEY=VALUE`` filters of a list query; any other unknown, repeated or oversized
    parameter is a :class:`BadRequest`."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for k, v in request.query_params.multi_items():
        if k in seen:
            raise BadRequest(f"parameter {k[:MAX_KEY]!r} given twice")
        seen.add(k)
        if k == "q" or k in _OTHER_PARAMS:
            continue
        if not k.startswith("meta.") or not 0 < len(k) - 5 <= MAX_KEY:
            raise BadRequest(f"unknown parameter {k[:MAX_KEY]!r}: a session list takes q and meta.KEY=VALUE")
        if len(v) > MAX_VALUE:
            raise BadRequest(f"parameter {k!r}: at most {MAX_VALUE} characters")
        out[k[5:]] = v
    if len(out) > MAX_FILTERS:
        raise BadRequest(f"at most {MAX_FILTERS} meta.KEY filters")
    return out


def _listed(store_id: str, readers: Any, q: str, filters: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for r in readers:
        s = summary(store_id, r)
        if (not q and not filters) or matches(s, r.meta, q, filters):
            out.append(s)
    return out


@router.get("/api/stores")
def stores_list(state: State) -> Any:
    out = []
    for e in state.stores.values():
        try:
            n, problems = len(e.store.session_ids()), []
        except LlmriError as exc:
            n, problems = 0, [e.public(str(exc))]
        out.append({"id": e.id, "label": e.label, "n_sessions": n, "problems": problems})
    return {"stores": out}


@router.get("/api/stores/{store_id}/sessions")
def store_sessions(state: State, store_id: str, request: Request, q: Search = "") -> Any:
    filters = _filters(request)
    e = state.store(store_id)
    readers = e.store.sessions()
    return {"store": e.id, "sessions": _listed(e.id, readers, q, filters), "problems": e.problems()}


@router.get("/api/sessions")
def sessions(state: State, request: Request, q: Search = "") -> Any:
    """Every store's sessions, newest first; ``q`` and ``meta.KEY=VALUE`` narrow the list (the
    stores' ``n_sessions`` still count them all)."""
    filters = _filters(request)
    out, stores_out = [], []
    for e in state.stores.values():
        try:
            readers = e.store.sessions()
            problems = e.problems()
        except LlmriError as exc:
            readers, problems = [], [e.public(str(exc))]
        out.extend(_listed(e.id, readers, q, filters))
        stores_out.append({"id": e.id, "label": e.label, "n_sessions": len(readers), "problems": problems})
    out.sort(key=lambda s: (str(s.get("created", "")), s["id"]), reverse=True)
    return {"stores": stores_out, "sessions": out}


@router.get("/api/sessions/{store_id}/{session_id}")
def session(state: State, store_id: str, session_id: str) -> Any:
    r = state.reader(store_id, session_id)
    rows, cols = grid_shape(len(r.layers))
    return {"summary": summary(store_id, r), "meta": json_safe(r.meta), "grid": [int(rows), int(cols)]}


@router.get("/api/sessions/{store_id}/{session_id}/tokens")
def tokens(state: State, store_id: str, session_id: str, start: int | None = None, stop: int | None = None) -> Any:
    r = state.reader(store_id, session_id)
    table = r.tokens
    total = len(table)
    s = 0 if start is None else start
    e = total if stop is None else stop
    if s < 0 or e < 0:
        raise BadRequest("start and stop must be >= 0")
    s, e = min(s, total), max(min(s, total), min(e, total))
    recs = [table[i].to_dict() for i in range(s, e)]
    return json_safe({"start": s, "stop": e, "total": total, "status": r.status, "tokens": recs})


def _parse_key(key: str) -> tuple[str, str]:
    parts = key.split("/")
    if len(parts) != 2:
        raise NotFound("a session key is STORE/SESSION")
    return parts[0], parts[1]


@router.get("/api/compare")
def compare(state: State, a: Annotated[str, Query()], b: Annotated[str, Query()]) -> Any:
    ra = state.reader(*_parse_key(a))
    rb = state.reader(*_parse_key(b))
    why = comparable(ra, rb)
    if why:
        return JSONResponse({"comparable": False, "error": f"these sessions cannot be compared: {why}"}, 409)
    return {"comparable": True, "n_frames": min(len(ra), len(rb))}
