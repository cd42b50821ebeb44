"""A session's direction probes (docs/interventions.md, "Watching a direction: probes"): the probe
strip, every probe's cosine and projection over the session (binary). Every value is the session's
own (``SessionReader.probe()``)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response

from ..encoding import MEDIA_TYPE, encode_array
from ..state import BadRequest
from . import State

router = APIRouter()


@router.get("/api/sessions/{store_id}/{session_id}/probestrip")
def probe_strip(state: State, store_id: str, session_id: str) -> Response:
    """``[2, P, T, L]`` float32, binary (:mod:`llmri.viewer.encoding`, ``kind: "probestrip"``, ``names``
    the probes in order): ``[0]`` each probe's projection (the dot with its unit direction) per token and
    layer, ``[1]`` its cosine; NaN at a layer the direction has no vector for."""
    r = state.reader(store_id, session_id)
    names = r.probes
    if not names:
        raise BadRequest("this session has no probes (capture with probes=[...] or --probe FILE)")
    total, n_layers = len(r), len(r.layers)
    traces = [r.probe(name, 0, total) for name in names]
    arr = np.stack(
        [
            np.stack([t.projection.reshape(total, n_layers) for t in traces]),
            np.stack([t.cosine.reshape(total, n_layers) for t in traces]),
        ]
    ).astype(np.float32)
    body = encode_array(arr, kind="probestrip", names=names, start=0, stop=total, total=total, status=r.status)
    return Response(body, media_type=MEDIA_TYPE)
