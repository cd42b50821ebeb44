"""A session's readouts (docs/readouts.md): the logit lens and attention per head of a range of
positions (JSON), the lens strip (``next_prob [T, L]`` over the session, binary) and the markers.

Every value is the session's own (``SessionReader.lens()`` / ``.attention()``); the only thing
computed here is the lens's decision layer per position (:func:`llmri.readouts.decision_layers`,
the one the markers use), and the id of the token that came next (from the token table).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response

from ..._jsonsafe import json_safe
from ...readouts import decision_layers
from ...readouts import markers as session_markers
from ...store import SessionReader
from ..encoding import MEDIA_TYPE, encode_array
from ..state import BadRequest
from . import State

#: The most positions one lens request returns (the client asks again for the rest).
MAX_LENS_RANGE = 256
#: The most positions one attention request returns (a row is ``L * H * k`` pairs).
MAX_ATTENTION_RANGE = 16

router = APIRouter()


def _has(r: SessionReader, kind: str) -> None:
    if kind not in r.readouts:
        flag = "--lens" if kind == "lens" else "--attention"
        raise BadRequest(f"this session has no {kind} readout (capture with {flag})")


def _range(start: int | None, stop: int | None, total: int, most: int) -> tuple[int, int]:
    s = 0 if start is None else start
    e = total if stop is None else stop
    if s < 0 or e < 0:
        raise BadRequest("start and stop must be >= 0")
    s = min(s, total)
    return s, max(s, min(e, total, s + most))


def lens_json(r: SessionReader, s: int, e: int) -> dict[str, Any]:
    """The lens of positions ``s..e`` as JSON: each field ``[n, L, ...]``, ``top_text`` (None for a
    session recorded before the texts), ``next_id`` (the token at ``t + 1``, -1 for the last) and
    ``decision`` (the decision layer, -1 where there is none)."""
    table = r.lens(s, e)
    ids = r.tokens.ids
    next_id = [int(ids[t + 1]) if t + 1 < len(ids) else -1 for t in range(s, e)]
    doc: dict[str, Any] = {"start": s, "stop": e, "total": len(r), "layers": r.layers, "next_id": next_id}
    doc.update(table.arrays())
    doc.setdefault("top_text", None)
    doc["decision"] = decision_layers(table.top_ids[:, :, 0]) if len(table) else []
    out: dict[str, Any] = json_safe(doc)
    return out


def attention_json(r: SessionReader, s: int, e: int) -> dict[str, Any]:
    """Attention per head of positions ``s..e`` as JSON: ``top_pos`` / ``top_weight``
    ``[n, L, H, k]`` (-1 / null where absent), ``entropy`` and ``sink`` ``[n, L, H]``."""
    table = r.attention(s, e)
    doc: dict[str, Any] = {"start": s, "stop": e, "total": len(r), "layers": r.layers, **table.arrays()}
    out: dict[str, Any] = json_safe(doc)
    return out


@router.get("/api/sessions/{store_id}/{session_id}/lens")
def lens(state: State, store_id: str, session_id: str, start: int | None = None, stop: int | None = None) -> Any:
    r = state.reader(store_id, session_id)
    _has(r, "lens")
    s, e = _range(start, stop, len(r), MAX_LENS_RANGE)
    return lens_json(r, s, e)


@router.get("/api/sessions/{store_id}/{session_id}/attention")
def attention(state: State, store_id: str, session_id: str, start: int | None = None, stop: int | None = None) -> Any:
    r = state.reader(store_id, session_id)
    _has(r, "attention")
    s, e = _range(start, stop, len(r), MAX_ATTENTION_RANGE)
    return attention_json(r, s, e)


@router.get("/api/sessions/{store_id}/{session_id}/lensstrip")
def lens_strip(state: State, store_id: str, session_id: str) -> Response:
    """``[2, T, L]`` float32, binary (:mod:`llmri.viewer.encoding`, ``kind: "lensstrip"``): ``[0]``
    each position's ``next_prob`` per layer (NaN where there is no next token), ``[1]`` 1 where the
    layer's top-1 is the last layer's (0 where not, NaN where absent): the decision layer is the
    first from which ``[1]`` stays 1."""
    r = state.reader(store_id, session_id)
    _has(r, "lens")
    total, n_layers = len(r), len(r.layers)
    table = r.lens(0, total)
    top1 = table.top_ids[:, :, 0].reshape(total, n_layers)
    same = np.where(top1[:, -1:] >= 0, (top1 == top1[:, -1:]).astype(np.float32), np.nan)
    arr = np.stack([np.asarray(table.next_prob, dtype=np.float32).reshape(total, n_layers), same.astype(np.float32)])
    body = encode_array(arr, kind="lensstrip", start=0, stop=total, total=total, status=r.status)
    return Response(body, media_type=MEDIA_TYPE)


#: How many sessions' markers an app keeps (``ViewerState.derived``): a session read again as it
#: grows gets them again, a finished one once.
_MARKERS_KEPT = 32


@router.get("/api/sessions/{store_id}/{session_id}/markers")
def markers(state: State, store_id: str, session_id: str) -> Any:
    """The session's markers (:func:`llmri.readouts.markers`), sorted by token: ``kind``,
    ``token``, ``layer``, ``head``, ``signal``, ``score``, ``reason``."""
    r = state.reader(store_id, session_id)
    cache = state.derived
    key = ("markers", store_id, session_id, len(r), r.status)
    found = cache.get(key)
    if found is None:
        found = cache[key] = [m.to_dict() for m in session_markers(r)]
        while len(cache) > _MARKERS_KEPT:
            del cache[next(iter(cache))]
    return json_safe({"total": len(r), "markers": found})
