"""Stores and sessions as JSON: the lists, one session's metadata, its token table, and ``/api/compare``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from ..._errors import LlmriError
from ..._jsonsafe import json_safe
from ...render.grid import grid_shape
from ..state import BadRequest, NotFound
from ..views import comparable, summary
from . import State

router = APIRouter()


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
def store_sessions(state: State, store_id: str) -> Any:
    e = state.store(store_id)
    readers = e.store.sessions()
    return {"store": e.id, "sessions": [summary(e.id, r) for r in readers], "problems": e.problems()}


@router.get("/api/sessions")
def sessions(state: State) -> Any:
    out, stores_out = [], []
    for e in state.stores.values():
        try:
            readers = e.store.sessions()
            problems = e.problems()
        except LlmriError as exc:
            readers, problems = [], [e.public(str(exc))]
        for r in readers:
            out.append(summary(e.id, r))
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
