"""A session's SAE features (docs/sae.md, "In the viewer"): which SAEs it holds, each token's top
features, one feature over every token (the feature strip), search by id or label, and a feature's
direction where the viewer holds the SAE's weights (live chat's ``--sae``).

Every value is read through the store's reader (``SessionReader.sae(name)``,
:class:`~llmri.store.saes.SAEFeatures`); nothing is recomputed here but summaries of those arrays.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import Response

from ..._jsonsafe import json_safe
from ...store import SessionReader
from ...store.saes import sae_records
from ..encoding import MEDIA_TYPE, encode_array
from ..state import BadRequest, NotFound, ViewerState
from . import State
from .readouts import _range as position_range

#: The most positions one rows request returns (the client asks again for the rest).
MAX_ROWS = 512
#: The most features one strip request holds (one row each).
MAX_STRIP = 16
#: The most matches a search returns.
MAX_MATCHES = 100
#: How many sessions' features an app keeps read (``ViewerState.derived``).
_KEPT = 16

router = APIRouter()


def _record(r: SessionReader, name: str) -> dict[str, Any]:
    rec = next((x for x in sae_records(r.meta) if x.get("name") == name), None)
    if rec is None:
        held = ", ".join(r.saes) or "none"
        raise NotFound(f"no SAE {name[:80]!r} in this session (it has: {held[:400]})")
    return dict(rec)


def features_of(state: ViewerState, store_id: str, session_id: str, name: str) -> Any:
    """The whole session's :class:`~llmri.store.saes.SAEFeatures` of SAE ``name`` (read once per
    committed length; 404 for an SAE the session does not hold)."""
    r = state.reader(store_id, session_id)
    _record(r, name)
    key = (f"sae:{name}", store_id, session_id, len(r), r.status)
    found = state.derived.get(key)
    if found is None:
        found = state.derived[key] = r.sae(name)
        while len(state.derived) > _KEPT * 2:
            del state.derived[next(iter(state.derived))]
    return found


def _feature(value: str, d_sae: int) -> int:
    try:
        f = int(value.strip())
    except ValueError:
        raise BadRequest(f"a feature is a whole number, got {value[:40]!r}") from None
    if not 0 <= f < d_sae:
        raise BadRequest(f"no feature {f}: this SAE has 0-{d_sae - 1}")
    return f


def loaded_sae(state: ViewerState, record: dict[str, Any]) -> Any:
    """The SAE of ``record`` among those this viewer holds (the live engine's), matched by name and
    the weights' sha256; ``None`` where it holds none."""
    engine = getattr(state.live, "engine", None)
    for sae in getattr(engine, "saes", None) or []:
        if sae.name == record.get("name") and sae.sha256() == record.get("sha256"):
            return sae
    return None


@router.get("/api/sessions/{store_id}/{session_id}/features")
def sae_list(state: State, store_id: str, session_id: str) -> Any:
    """The SAEs the session holds: each one's record (labels counted, not listed), its mean L0, FVU
    and cosine over the session, and whether this viewer can give its features' directions."""
    r = state.reader(store_id, session_id)
    out = []
    for name in r.saes:
        rec = _record(r, name)
        labels = rec.pop("labels", None) or {}
        f = features_of(state, store_id, session_id, name)
        with np.errstate(all="ignore"):
            means = {m: float(np.nanmean(getattr(f, m))) if len(f) else None for m in ("l0", "fvu", "cosine")}
        rec.update(n_labels=len(labels), mean=means, direction=loaded_sae(state, rec) is not None)
        out.append(rec)
    sae = r.meta.get("sae") or {}
    return json_safe({"total": len(r), "k": sae.get("k"), "saes": out})


@router.get("/api/sessions/{store_id}/{session_id}/features/{sae}")
def sae_rows(
    state: State, store_id: str, session_id: str, sae: str, start: int | None = None, stop: int | None = None
) -> Any:
    """Positions ``start..stop`` (at most :data:`MAX_ROWS`): ``ids`` ``[n, k]`` (-1 past the stored
    ones), ``values`` ``[n, k]`` (null there), ``l0``, ``fvu``, ``cosine`` ``[n]``, and ``labels``
    ``{feature: text}`` of the features in those rows."""
    f = features_of(state, store_id, session_id, sae)
    total = len(f)
    s, e = position_range(start, stop, total, MAX_ROWS)
    ids = f.ids[s:e]
    labels = {str(i): f.label(i) for i in np.unique(ids[ids >= 0]).tolist() if f.label(i)}
    doc = {"name": sae, "start": s, "stop": e, "total": total, "k": int(f.ids.shape[-1]), "ids": ids,
           "values": f.values[s:e].astype(np.float32), "l0": f.l0[s:e], "fvu": f.fvu[s:e],
           "cosine": f.cosine[s:e], "labels": labels}  # fmt: skip
    out: dict[str, Any] = json_safe(doc)
    return out


@router.get("/api/sessions/{store_id}/{session_id}/features/{sae}/strip")
def sae_strip(state: State, store_id: str, session_id: str, sae: str, feature: list[str] = Query()) -> Response:
    """``[F, T]`` float32, binary (``kind: "featurestrip"``): each asked feature's activation at every
    token (``SAEFeatures.activation``: 0 where it is not among the stored top-k); the header has
    ``features``, ``labels`` and ``max`` (each feature's largest)."""
    f = features_of(state, store_id, session_id, sae)
    d_sae = int(f.record.get("d_sae") or 0)
    wanted = [_feature(x, d_sae) for part in feature for x in part.split(",") if x.strip()]
    if not wanted or len(wanted) > MAX_STRIP:
        raise BadRequest(f"ask for 1 to {MAX_STRIP} features (feature=ID)")
    arr = np.stack([f.activation(i) for i in wanted]).astype(np.float32)
    peaks = [float(a.max()) if a.size else 0.0 for a in arr]
    body = encode_array(arr, kind="featurestrip", sae=sae, features=wanted, labels=[f.label(i) for i in wanted],
                        max=peaks, start=0, stop=len(f), total=len(f))  # fmt: skip
    return Response(body, media_type=MEDIA_TYPE)


def _present(f: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The features stored anywhere in the session: ids, how many tokens each is stored at, its
    largest activation and the first token where it has it."""
    ids = f.ids.reshape(-1)
    vals = np.nan_to_num(f.values.astype(np.float32)).reshape(-1)
    ok = ids >= 0
    tok = np.repeat(np.arange(len(f)), f.ids.shape[-1])[ok]
    ids, vals = ids[ok], vals[ok]
    feats, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    peak = np.full(len(feats), -np.inf, dtype=np.float32)
    np.maximum.at(peak, inverse, vals)
    at = np.full(len(feats), len(f), dtype=np.int64)
    hit = vals == peak[inverse]
    np.minimum.at(at, inverse[hit], tok[hit])
    return feats, counts, peak, at


@router.get("/api/sessions/{store_id}/{session_id}/features/{sae}/search")
def sae_search(state: State, store_id: str, session_id: str, sae: str, q: str = "", limit: int = 20) -> Any:
    """Features stored in this session whose id is ``q`` or whose label holds ``q`` (case-insensitive),
    the id match first, then by how many tokens they fire at; an empty ``q``: the most frequent. Each
    match: ``feature``, ``label``, ``fires`` (tokens where it is among the stored top-k), ``max`` and
    ``token`` (the first token with that maximum)."""
    if not 1 <= limit <= MAX_MATCHES:
        raise BadRequest(f"limit must be 1 to {MAX_MATCHES}")
    if len(q) > 200:
        raise BadRequest("q is 200 characters at most")
    f = features_of(state, store_id, session_id, sae)
    feats, counts, peak, at = _present(f)
    text = q.strip().lower()
    rows = []
    for i, fid in enumerate(feats.tolist()):
        label = f.label(fid)
        exact = text.isdigit() and int(text) == fid
        if text and not exact and text not in label.lower():
            continue
        rows.append((not exact, -int(counts[i]), fid, label, float(peak[i]), int(at[i])))
    rows.sort()
    matches = [{"feature": fid, "label": label, "fires": -n, "max": m, "token": t} for _, n, fid, label, m, t in rows]
    return json_safe({"q": q, "total": len(matches), "matches": matches[:limit]})


@router.get("/api/sessions/{store_id}/{session_id}/features/{sae}/direction")
def sae_direction(state: State, store_id: str, session_id: str, sae: str, feature: str, format: str = "json") -> Any:
    """Feature ``feature``'s direction (``SAE.direction``: its decoder row, unit length, float32
    ``[d_in]``) with the site it writes to (``layer``, ``signal``), for ``llmri.steer``; ``format=npy``:
    the row as a ``.npy`` file (``llmri capture --steer FILE.npy@LAYERS:SCALE`` takes it). 404 where this
    viewer does not hold the SAE's weights (it holds live chat's ``--sae`` ones)."""
    if format not in ("json", "npy"):
        raise BadRequest("format is json or npy")
    r = state.reader(store_id, session_id)
    rec = _record(r, sae)
    f = _feature(feature, int(rec.get("d_sae") or 0))
    held = loaded_sae(state, rec)
    if held is None:
        raise NotFound(f"this viewer does not hold SAE {sae}'s weights (llmri view --model ... --sae PATH loads them)")
    vec = np.asarray(held.direction(f).array()[0], dtype=np.float32)  # a Direction at the SAE's layer: its row
    if format == "npy":
        buf = io.BytesIO()
        np.save(buf, vec, allow_pickle=False)
        name = re.sub(r"[^\w.-]", "_", f"{sae}-feature{f}.npy")  # a header value, whatever the record says
        return Response(buf.getvalue(), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip
    return json_safe({"sae": sae, "feature": f, "label": rec.get("labels", {}).get(str(f), ""), "layer": held.layer,
                      "signal": held.signal, "d_in": int(vec.shape[0]), "direction": vec})  # fmt: skip
