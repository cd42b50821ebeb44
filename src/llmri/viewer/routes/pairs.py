"""Paired sessions: how a run differs from its baseline (``llmri.compare``, binary), a patching sweep's
heatmap (the stored :class:`~llmri.interventions.patching.PatchingResult`, JSON), and one cell of it run
on demand (POST).

A cell is run when it is clicked, not stored with the sweep: a sweep holds signals x layers x positions
cells (2,700 for a 30-token prompt on SmolLM2's 30 layers), each a capture of its own, while a click
costs one forward of the prompt. The run is kept in the sweep's store (``meta["patched_cell"]``, its
``meta["baseline"]`` the corrupt session), so the next click on that cell opens it without a model.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..._errors import LlmriError
from ..._jsonsafe import json_safe
from ...store import FrameStore, SessionReader
from ..encoding import MEDIA_TYPE, encode_array
from ..state import BadRequest, Conflict, NotFound, ViewerState
from ..views import comparable
from . import State
from .sessions import _parse_key

router = APIRouter()

#: How many comparisons an app keeps (``ViewerState.derived``), the encoded answer of each.
_KEPT = 32
#: The most bytes a cell request's JSON body may have.
MAX_BODY = 1024


def comparison_message(ra: SessionReader, rb: SessionReader) -> bytes:
    """``llmri.compare(a, b)`` as one binary array (:mod:`llmri.viewer.encoding`, ``kind: "comparison"``):
    float32 ``[2, signals, n, layers]``, ``[0]`` the cosine and ``[1]`` the relative L2 ``|a - b| / |a|``
    of each position both hold; the header adds ``signals``, ``metrics``, ``first_divergence`` (the
    first position whose token differs, ``null`` where none does), ``a`` and ``b`` (the session ids)."""
    from ...capture import compare

    c = compare(ra, rb)
    signals = list(c.cosine)
    n, n_layers = min(len(ra), len(rb)), len(ra.layers)
    arr = np.zeros((2, len(signals), n, n_layers), dtype=np.float32)
    for i, s in enumerate(signals):
        arr[0, i], arr[1, i] = c.cosine[s], c.rel_l2[s]
    head = {"kind": "comparison", "signals": signals, "metrics": ["cosine", "rel_l2"], "start": 0, "stop": n}
    head.update(first_divergence=c.first_divergence, a=c.a_id, b=c.b_id, total=n)
    return encode_array(arr, **head)


def _current(state: ViewerState, store_id: str, session_id: str) -> SessionReader:
    """The session as it is now: a reader kept while it was recording is opened again (the page asks
    for a live answer's comparison as soon as it ends, within the readers' poll interval)."""
    r = state.reader(store_id, session_id)
    return state.reader(store_id, session_id, fresh=True) if r.status == "recording" else r


@router.get("/api/comparison")
def comparison(state: State, a: Annotated[str, Query(max_length=300)], b: Annotated[str, Query(max_length=300)]) -> Any:
    """How session ``a`` differs from ``b`` (both ``STORE/SESSION``), per position and layer: see
    :func:`comparison_message`. 409 where the two cannot be compared (other model, reducer, tile)."""
    ra, rb = _current(state, *_parse_key(a)), _current(state, *_parse_key(b))
    why = comparable(ra, rb)
    if why:
        raise Conflict(f"these sessions cannot be compared: {why}")
    cache = state.derived
    key = ("comparison", a, b, len(ra), f"{ra.status}|{rb.status}|{len(rb)}")
    body = cache.get(key)
    if body is None:
        body = cache[key] = comparison_message(ra, rb)
        while len(cache) > _KEPT:
            del cache[next(iter(cache))]
    return Response(body, media_type=MEDIA_TYPE)


def _sweep(r: SessionReader) -> Any:
    from ...interventions.patching import PatchingResult

    try:
        return PatchingResult.of(r)
    except LlmriError:
        raise BadRequest("this session holds no patching sweep (llmri.patching with store=)") from None


def _cell_runs(store: FrameStore, session_id: str) -> dict[str, str]:
    """``{"signal/layer/position": run id}``: the cells of ``session_id``'s sweep already run into ``store``."""
    out = {}
    for r in store.sessions():
        cell = r.meta.get("patched_cell")
        if isinstance(cell, dict) and cell.get("sweep") == session_id:
            out[f"{cell.get('signal')}/{cell.get('layer')}/{cell.get('position')}"] = r.id
    return out


@router.get("/api/sessions/{store_id}/{session_id}/patching")
def patching(state: State, store_id: str, session_id: str) -> Any:
    """The sweep the session stores: ``PatchingResult.to_dict()`` (``values [signal][layer][position]``,
    ``signals``, ``layers``, ``tokens``, ``clean``, ``corrupt``, ``metric``, ``targets``) with
    ``normalized`` (1 where a patch restores the clean run), ``baseline`` (the clean session's id) and
    ``runs`` (the cells already run: ``{"signal/layer/position": session id}``)."""
    r = state.reader(store_id, session_id)
    sweep = _sweep(r)
    runs = _cell_runs(state.store(store_id).store, session_id)
    doc = {**sweep.to_dict(), "normalized": sweep.normalized().round(6), "baseline": r.meta.get("baseline")}
    doc["runs"] = runs
    return json_safe(doc)


async def _cell(request: Request) -> tuple[str, int, int]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadRequest("send the cell as JSON (Content-Type: application/json)")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadRequest(f"the request body is over {MAX_BODY} bytes")
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadRequest("the request body is not JSON") from None
    if not isinstance(data, dict) or set(data) != {"signal", "layer", "position"}:
        raise BadRequest('a cell is {"signal": ..., "layer": ..., "position": ...}')
    sig, layer, pos = data["signal"], data["layer"], data["position"]
    if not isinstance(sig, str) or any(not isinstance(x, int) or isinstance(x, bool) for x in (layer, pos)):
        raise BadRequest("a cell's signal is a name, its layer and position whole numbers")
    return sig, layer, pos


def _model(state: ViewerState) -> Any:
    """The live chat's model (``llmri view --model``): the only one the viewer holds."""
    from ..live import ModelEngine

    engine = getattr(state.live, "engine", None)
    if not isinstance(engine, ModelEngine):
        raise Conflict("this cell has not been run, and the viewer holds no model to run it: start it with --model")
    if engine.backend != "hf":
        raise Conflict(f"patching runs on the hf backend; the viewer's model runs on {engine.backend}")
    return engine.model


def _run_cell(r: SessionReader, clean_prompt: str, model: Any, store: FrameStore, cell: dict[str, Any]) -> str:
    from ...capture import rerun
    from ...interventions import patch

    rec = patch(clean_prompt, layers=cell["layer"], signal=cell["signal"], positions=(cell["position"],))
    return str(rerun(r, [rec], model=model, store=store, meta={"patched_cell": cell}).id)


@router.post("/api/sessions/{store_id}/{session_id}/patching/run")
async def run_cell(state: State, store_id: str, session_id: str, request: Request) -> Any:
    """One cell of the sweep (body ``{"signal", "layer", "position"}``) as a session: the corrupt prompt
    with that output patched from the clean prompt's. Answers ``{"key", "ran"}``: the stored run
    where the cell was run before (``ran`` false), else a new one run now on the live chat's model
    (409 while it answers a chat message, or where the viewer holds none)."""
    sig, layer, pos = await _cell(request)
    r = state.reader(store_id, session_id)
    sweep = _sweep(r)
    if sig not in sweep.signals or layer not in sweep.layers or not 0 <= pos < len(sweep.tokens):
        have = f"signals {', '.join(sweep.signals)}, layers {', '.join(map(str, sweep.layers))}"
        raise BadRequest(f"no such cell: the sweep has {have}, positions 0..{len(sweep.tokens) - 1}")
    entry = state.store(store_id)
    store = entry.store
    found = (await run_in_threadpool(_cell_runs, store, session_id)).get(f"{sig}/{layer}/{pos}")
    if found is not None:
        return {"key": f"{store_id}/{found}", "ran": False}
    model = _model(state)
    base_id = r.meta.get("baseline")
    if not isinstance(base_id, str) or base_id not in store.session_ids():
        raise NotFound("the sweep's clean session is not in its store")
    clean_prompt = store.session(base_id).meta.get("prompt")
    if not isinstance(clean_prompt, str) or not clean_prompt:
        raise BadRequest("the sweep's clean session records no raw prompt to patch from")
    # checked and taken on the event loop, where the live chat checks it too: no turn starts meanwhile
    if getattr(state.live, "run", None) is not None or state.model_lock.locked():
        raise Conflict("the model is busy (a live chat answer or another cell): try again when it is done")
    state.model_lock.acquire()
    try:
        cell = {"sweep": session_id, "signal": sig, "layer": layer, "position": pos}
        run_id = await run_in_threadpool(_run_cell, r, clean_prompt, model, store, cell)
    except LlmriError as exc:  # the model is not the session's, the prompt does not patch: say why
        raise Conflict(entry.public(f"this cell could not be run: {exc}")) from None
    finally:
        state.model_lock.release()
    return {"key": f"{store_id}/{run_id}", "ran": True}
