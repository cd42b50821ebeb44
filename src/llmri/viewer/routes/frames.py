"""A session's frames and per-layer stats, binary (the encoding of :mod:`llmri.viewer.encoding`)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import Response

from ...frame import frame_dtype_of
from ...store import SessionReader
from ..encoding import MEDIA_TYPE, encode_array, encode_frames, quantise_u8
from ..state import BadRequest
from . import State

#: The most frames one range request returns (a client asks again for the rest).
MAX_RANGE = 2048

router = APIRouter()


def _range(start: int | None, stop: int | None, total: int) -> tuple[int, int]:
    s = 0 if start is None else start
    e = total if stop is None else stop
    if s < 0 or e < 0:
        raise BadRequest("start and stop must be >= 0")
    s = min(s, total)
    e = max(s, min(e, total, s + MAX_RANGE))
    return s, e


def _signal(r: SessionReader, signal: str) -> str:
    if signal not in r.signals:
        have = ", ".join(r.signals) or "none: chat-only session"
        raise BadRequest(f"no signal {signal!r} in this session (it has: {have})")
    return signal


@router.get("/api/sessions/{store_id}/{session_id}/frames")
def frames(
    state: State,
    store_id: str,
    session_id: str,
    signal: Annotated[str, Query()],
    start: int | None = None,
    stop: int | None = None,
    dtype: str | None = None,
) -> Response:
    r = state.reader(store_id, session_id)
    names = signal.split(",")
    for name in names:
        _signal(r, name)
    if len(set(names)) != len(names):
        raise BadRequest("a signal is named twice")
    if dtype not in (None, "float16", "uint8"):  # None: the session's own frame dtype
        raise BadRequest("dtype must be float16 or uint8")
    wire = "float16" if dtype == "float16" else frame_dtype_of(r.meta)
    total = len(r)
    s, e = _range(start, stop, total)
    if len(names) == 1:
        arr = np.asarray(r.frames(signal, s, e))
        n = len(arr)
    else:  # several signals in one message: [signals, n, layers, H, W], one round trip for a cold jump
        arr = np.stack([np.asarray(r.frames(name, s, e)) for name in names])
        n = arr.shape[1]
    head = {"kind": "frames", "signal": signal, "start": s, "stop": s + n, "total": total}
    head["status"], head["session"] = r.status, r.id
    if dtype == "uint8":
        q, lo, hi = quantise_u8(arr)
        body = encode_array(q, lo=lo, hi=hi, **head)
    else:
        body = encode_frames(arr, wire, **head)
    return Response(body, media_type=MEDIA_TYPE)


@router.get("/api/sessions/{store_id}/{session_id}/stats")
def stats(state: State, store_id: str, session_id: str, signal: Annotated[str, Query()]) -> Response:
    r = state.reader(store_id, session_id)
    _signal(r, signal)
    total = len(r)
    norm, sparsity = r.stats(signal, 0, total)
    arr = np.stack([np.asarray(norm, np.float32), np.asarray(sparsity, np.float32)])
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    body = encode_array(arr, kind="stats", signal=signal, start=0, stop=arr.shape[1], total=total)
    return Response(body, media_type=MEDIA_TYPE)
