"""``create_app(stores)``: the viewer's FastAPI app (JSON + binary REST for replay, WebSocket for live sessions).

Endpoints (every one behind :class:`~llmri.viewer.security.SecurityMiddleware`):

=======================================================  ==============================================
``GET /``                                                the page (``viewer_web/index.html``)
``GET /static/{file}``                                   the client's JS/CSS (an allow-list built at start)
``GET /api/info``                                        version, stores, features
``GET /api/colormaps``                                   colour-map LUTs (``uint8[256,3]`` each, flattened)
``GET /api/stores``                                      the stores given on the command line (ids, labels)
``GET /api/stores/{store}/sessions``                     one store's sessions (summaries)
``GET /api/sessions``                                    every session of every store (summaries)
``GET /api/sessions/{store}/{session}``                  one session: summary, full metadata, layer grid
``GET /api/sessions/{store}/{session}/tokens``           token table records (``?start=&stop=``)
``GET /api/sessions/{store}/{session}/frames``           a frame range, binary (``?signal=&start=&stop=``,
                                                         ``&dtype=uint8`` for quantised; ``signal=resid,mlp``
                                                         stacks several: ``[signals, n, ...]``); see encoding.py
``GET /api/sessions/{store}/{session}/stats``            ``[2, n, layers]`` float32 norm/sparsity, binary
``GET /api/compare?a={store}/{session}&b=...``           whether two sessions can be diffed (409 if not)
``WS  /api/sessions/{store}/{session}/live``             JSON progress messages while a session records
=======================================================  ==============================================

Unknown or malformed ids answer 404 (``{"error": ...}``), bad parameters 400. A failure inside the server
answers 500 with one generic line (the detail, which may name files, goes to the ``llmri.viewer`` log).
"""

# No "from __future__ import annotations": FastAPI resolves the route signatures below at definition time,
# and their types (Request, WebSocket) are imported inside create_app so that fastapi stays optional.

import asyncio
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from .. import __version__
from .._errors import LlmriError, require
from ..session import SessionReader
from ..store import FrameStore, open_store
from .encoding import MEDIA_TYPE, encode_array, quantise_u8
from .security import SecurityMiddleware, SecurityPolicy, security_headers, valid_id

#: The most frames one range request returns (a client asks again for the rest).
MAX_RANGE = 2048
COLORMAPS = ("grayscale", "energy", "diverging")
#: What a 500 says: the detail may name files and stays in the server's log.
INTERNAL_ERROR = "internal error: the viewer could not answer this request (details are in its log)"
log = logging.getLogger("llmri.viewer")


class NotFound(LlmriError):
    """An id that names no store or session (answered with 404)."""


class BadRequest(LlmriError):
    """A parameter out of range (answered with 400)."""


@dataclass
class _StoreEntry:
    id: str
    label: str
    store: FrameStore

    def public(self, message: str) -> str:
        """``message`` with the store's location (as opened, absolute, resolved) replaced by its label."""
        url = self.store.url or ""
        roots = {url}
        if url and "://" not in url:
            roots |= {os.path.abspath(url), os.path.realpath(url)}
        paths = (r for r in roots if ("/" in r or os.sep in r) and r != self.label)  # not "memory"
        for root in sorted(paths, key=len, reverse=True):
            message = message.replace(root, self.label)
        return message

    def problems(self) -> list[str]:
        return [self.public(p) for p in self.store.problems]


@dataclass
class ViewerState:
    """What the app serves: its stores (by id), the security policy, and the optional live plug-in."""

    stores: dict[str, _StoreEntry]
    policy: SecurityPolicy
    live: Any = None
    poll_interval: float = 0.5
    _readers: dict[tuple[str, str], tuple[float, SessionReader]] = field(default_factory=dict)

    def store(self, store_id: str) -> _StoreEntry:
        if not valid_id(store_id) or store_id not in self.stores:
            raise NotFound("no such store")
        return self.stores[store_id]

    def reader(self, store_id: str, session_id: str, fresh: bool = False) -> SessionReader:
        """Open (or reuse) a session reader; a recording session is reopened at most every poll interval."""
        entry = self.store(store_id)
        if not valid_id(session_id):
            raise NotFound("no such session")
        key = (store_id, session_id)
        now = time.monotonic()
        hit = self._readers.get(key)
        if hit is not None and not fresh:
            opened, r = hit
            if r.status != "recording" or now - opened < self.poll_interval:
                return r
        if session_id not in entry.store.session_ids():
            raise NotFound("no such session")
        try:
            r = entry.store.session(session_id)
        except LlmriError as exc:
            log.warning("store %s: session %s cannot be read: %s", entry.label, session_id, exc)
            raise NotFound(f"session {session_id} cannot be read (the viewer's log says why)") from None
        self._readers[key] = (now, r)
        return r


# -- helpers -----------------------------------------------------------------------------------
def _clean(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, numpy scalars/arrays become Python values."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        return _clean(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def grid_shape(n_layers: int) -> tuple[int, int]:
    """``(rows, cols)`` of the layer grid: the shared rule of llmri.colormaps when present."""
    try:
        from ..render import grid_shape as shared

        rows, cols = shared(n_layers)
        return int(rows), int(cols)
    except ImportError:
        pass
    cols = max(1, math.ceil(math.sqrt(max(n_layers, 1))))
    return max(1, math.ceil(n_layers / cols)), cols


def _fallback_lut(name: str) -> np.ndarray:
    t = np.linspace(0.0, 1.0, 256)[:, None]
    if name == "grayscale":
        rgb = np.repeat(t, 3, axis=1)
    elif name == "energy":
        stops = np.array([[0, 0, 0], [20, 30, 120], [40, 120, 220], [240, 240, 240], [230, 60, 40], [120, 0, 0]])
        x = np.linspace(0, 1, len(stops))
        rgb = np.stack([np.interp(t[:, 0], x, stops[:, c]) for c in range(3)], axis=1) / 255
    else:
        stops = np.array([[30, 60, 180], [120, 170, 230], [245, 245, 245], [235, 140, 100], [180, 20, 30]])
        x = np.linspace(0, 1, len(stops))
        rgb = np.stack([np.interp(t[:, 0], x, stops[:, c]) for c in range(3)], axis=1) / 255
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def colormap_luts() -> dict[str, Any]:
    """``{"names", "luts", "kinds"}``: every colour map as a flat ``[r0, g0, b0, r1, ...]`` list of 768 ints
    and its kind (magnitude/signed), from llmri.colormaps so the viewer and the PNG exporter agree."""
    try:
        from ..colormaps import kind, lut
    except ImportError:
        lut, kind = _fallback_lut, (lambda name: "signed" if name == "diverging" else "magnitude")
    luts: dict[str, list[int]] = {}
    kinds: dict[str, str] = {}
    for name in COLORMAPS:
        arr = np.asarray(lut(name), dtype=np.uint8).reshape(256, 3)
        luts[name] = [int(v) for v in arr.reshape(-1)]
        kinds[name] = kind(name)
    return {"names": list(COLORMAPS), "luts": luts, "kinds": kinds}


def _title(meta: Mapping[str, Any]) -> str:
    msgs = meta.get("messages") or []
    for m in reversed(msgs):
        if isinstance(m, dict) and m.get("role") == "user":
            return str(m.get("content", ""))[:120]
    return str(meta.get("prompt") or "")[:120]


def summary(store_id: str, r: SessionReader) -> dict[str, Any]:
    meta = r.meta
    model = meta.get("model") or {}
    reducer = meta.get("reducer") or {}
    return _clean(
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
            "model": model.get("name", "") if isinstance(model, dict) else str(model),
            "backend": meta.get("backend", ""),
            "reducer": reducer.get("kind", "") if isinstance(reducer, dict) else str(reducer),
            "created": meta.get("created", ""),
            "stop_reason": meta.get("stop_reason", ""),
            "title": _title(meta),
        }
    )


def comparable(a: SessionReader, b: SessionReader) -> str:
    """Empty string if frames of ``a`` and ``b`` can be subtracted, else the reason why not (one line)."""
    ma, mb = a.meta, b.meta
    if not a.signals or not b.signals:
        return "a chat-only session has no frames to compare"
    fa = (ma.get("model") or {}).get("fingerprint")
    fb = (mb.get("model") or {}).get("fingerprint")
    if not fa or fa != fb:
        na, nb = (ma.get("model") or {}).get("name", "?"), (mb.get("model") or {}).get("name", "?")
        return f"different models ({na} {fa or 'no fingerprint'} vs {nb} {fb or 'no fingerprint'})"
    if (ma.get("reducer") or {}) != (mb.get("reducer") or {}):
        ka, kb = (ma.get("reducer") or {}).get("kind", "?"), (mb.get("reducer") or {}).get("kind", "?")
        return f"different reducers ({ka} vs {kb}, or different seed/tile/state): their pixels do not correspond"
    if set(a.signals) != set(b.signals):
        return f"different signals ({', '.join(a.signals)} vs {', '.join(b.signals)})"
    if a.tile != b.tile or len(a.layers) != len(b.layers):
        return "different tile shapes or layer counts"
    return ""


def _range(start: int | None, stop: int | None, total: int) -> tuple[int, int]:
    s = 0 if start is None else start
    e = total if stop is None else stop
    if s < 0 or e < 0:
        raise BadRequest("start and stop must be >= 0")
    s = min(s, total)
    e = max(s, min(e, total, s + MAX_RANGE))
    return s, e


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file shipped in viewer_web, read once: the static route can only ever serve these."""
    types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    out: dict[str, tuple[bytes, str]] = {}
    root = resources.files("llmri") / "viewer_web"

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, name + "/")
            elif child.is_file():
                ext = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
                if ext in types:
                    out[name] = (child.read_bytes(), types[ext] + ("; charset=utf-8" if ext != ".svg" else ""))

    if root.is_dir():
        walk(root, "")
    return out


def _label(store: FrameStore) -> str:
    """A store given without a label is shown by its last path component (its url may be absolute)."""
    url = (store.url or "").rstrip("/\\")
    return url.replace("\\", "/").rsplit("/", 1)[-1] or "memory"


def _as_entries(stores: Any) -> dict[str, _StoreEntry]:
    if isinstance(stores, (FrameStore, str)) or hasattr(stores, "__fspath__"):
        stores = [stores]
    items: Iterable[tuple[str, Any]]
    if isinstance(stores, Mapping):
        items = [(str(k), v) for k, v in stores.items()]
    else:  # paths are labelled as given (relative stays relative), never resolved
        items = [(_label(s) if isinstance(s, FrameStore) else str(s), s) for s in stores]
    out: dict[str, _StoreEntry] = {}
    for i, (label, s) in enumerate(items):
        store = s if isinstance(s, FrameStore) else open_store(s)
        out[f"s{i}"] = _StoreEntry(f"s{i}", label, store)
    return out


# -- the app -----------------------------------------------------------------------------------
def create_app(
    stores: Any,
    *,
    port: int | None = None,
    token: str | None = None,
    remote: bool = False,
    live: Any = None,
    poll_interval: float = 0.5,
) -> Any:
    """Build the viewer app over ``stores``.

    Parameters
    ----------
    stores
        A FrameStore or path, a list of them, or a ``{label: store_or_path}`` mapping. Store ids
        ``s0``, ``s1``, ... follow this order; paths are opened with :func:`llmri.open_store`.
    port
        The port the server listens on; requests whose Host names another port are refused.
        ``None`` accepts any port (``serve`` sets it once the socket is bound).
    token
        Required on every request when set (non-loopback binds): see :mod:`llmri.viewer.security`.
    remote
        The server is bound to a non-loopback address: the Host allow-list is lifted and ``token``
        must be set.
    live
        Optional plug-in (the live chat helper): an object with ``attach(app, state)`` that adds
        its routes; ``/api/info`` reports ``"live": true`` when given.
    poll_interval
        Seconds between checks for new frames of a session being recorded.

    Returns a FastAPI app; ``app.state.llmri`` is the :class:`ViewerState`.
    """
    fastapi = require("fastapi", "viewer")
    from fastapi import Query, Request, WebSocket
    from fastapi.responses import JSONResponse, Response
    from starlette.websockets import WebSocketDisconnect

    if remote and not token:
        raise ValueError("a remote (non-loopback) viewer needs a token")
    state = ViewerState(_as_entries(stores), SecurityPolicy(port=port, token=token, remote=remote), live, poll_interval)
    static = _static_files()
    app = fastapi.FastAPI(title="llmri viewer", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.llmri = state

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Any:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest) -> Any:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(LlmriError)
    async def _llmri(request: Request, exc: LlmriError) -> Any:
        log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return JSONResponse({"error": INTERNAL_ERROR}, status_code=500)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Any:
        # Starlette answers this outside every middleware (then re-raises, so uvicorn logs the traceback):
        # the response carries the security headers itself.
        return JSONResponse({"error": INTERNAL_ERROR}, status_code=500, headers=dict(security_headers()))

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Any:
        where = ", ".join(".".join(str(x) for x in e.get("loc", ())) for e in exc.errors())
        return JSONResponse({"error": f"bad parameter: {where}"}, status_code=400)

    # Response headers (nosniff, CSP, CORP, COOP, no-store...) are added by SecurityMiddleware, to every response.

    def _static(name: str) -> Any:
        hit = static.get(name)
        if hit is None:
            raise NotFound("no such file")
        return Response(hit[0], media_type=hit[1])

    @app.get("/", include_in_schema=False)
    def index() -> Any:
        if "index.html" not in static:
            return JSONResponse({"error": "the viewer's web client is not installed (viewer_web missing)"}, 500)
        return _static("index.html")

    @app.get("/static/{name:path}", include_in_schema=False)
    def static_file(name: str) -> Any:
        return _static(name)

    @app.get("/api/info")
    def info() -> Any:
        return {
            "version": __version__,
            "stores": [{"id": e.id, "label": e.label} for e in state.stores.values()],
            "live": state.live is not None,
            "colormaps": list(COLORMAPS),
            "max_range": MAX_RANGE,
        }

    @app.get("/api/colormaps")
    def colormaps() -> Any:
        return colormap_luts()

    @app.get("/api/stores")
    def stores_list() -> Any:
        out = []
        for e in state.stores.values():
            try:
                n, problems = len(e.store.session_ids()), []
            except LlmriError as exc:
                n, problems = 0, [e.public(str(exc))]
            out.append({"id": e.id, "label": e.label, "n_sessions": n, "problems": problems})
        return {"stores": out}

    @app.get("/api/stores/{store_id}/sessions")
    def store_sessions(store_id: str) -> Any:
        e = state.store(store_id)
        readers = e.store.sessions()
        return {"store": e.id, "sessions": [summary(e.id, r) for r in readers], "problems": e.problems()}

    @app.get("/api/sessions")
    def sessions() -> Any:
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

    @app.get("/api/sessions/{store_id}/{session_id}")
    def session(store_id: str, session_id: str) -> Any:
        r = state.reader(store_id, session_id)
        rows, cols = grid_shape(len(r.layers))
        return {"summary": summary(store_id, r), "meta": _clean(r.meta), "grid": [rows, cols]}

    @app.get("/api/sessions/{store_id}/{session_id}/tokens")
    def tokens(store_id: str, session_id: str, start: int | None = None, stop: int | None = None) -> Any:
        r = state.reader(store_id, session_id)
        table = r.tokens
        total = len(table)
        s = 0 if start is None else start
        e = total if stop is None else stop
        if s < 0 or e < 0:
            raise BadRequest("start and stop must be >= 0")
        s, e = min(s, total), max(min(s, total), min(e, total))
        recs = [table[i].to_dict() for i in range(s, e)]
        return _clean({"start": s, "stop": e, "total": total, "status": r.status, "tokens": recs})

    def _signal(r: SessionReader, signal: str) -> str:
        if signal not in r.signals:
            have = ", ".join(r.signals) or "none: chat-only session"
            raise BadRequest(f"no signal {signal!r} in this session (it has: {have})")
        return signal

    @app.get("/api/sessions/{store_id}/{session_id}/frames")
    def frames(
        store_id: str,
        session_id: str,
        signal: str = Query(...),
        start: int | None = None,
        stop: int | None = None,
        dtype: str = "float16",
    ) -> Any:
        r = state.reader(store_id, session_id)
        names = signal.split(",")
        for name in names:
            _signal(r, name)
        if len(set(names)) != len(names):
            raise BadRequest("a signal is named twice")
        if dtype not in ("float16", "uint8"):
            raise BadRequest("dtype must be float16 or uint8")
        total = len(r)
        s, e = _range(start, stop, total)
        if len(names) == 1:
            arr = np.asarray(r.frames(signal, s, e), dtype=np.float16)
            n = len(arr)
        else:  # several signals in one message: [signals, n, layers, H, W], one round trip for a cold jump
            arr = np.stack([np.asarray(r.frames(name, s, e), dtype=np.float16) for name in names])
            n = arr.shape[1]
        head = {"kind": "frames", "signal": signal, "start": s, "stop": s + n, "total": total}
        head["status"], head["session"] = r.status, r.id
        if dtype == "uint8":
            q, lo, hi = quantise_u8(arr)
            body = encode_array(q, lo=lo, hi=hi, **head)
        else:
            body = encode_array(arr, **head)
        return Response(body, media_type=MEDIA_TYPE)

    @app.get("/api/sessions/{store_id}/{session_id}/stats")
    def stats(store_id: str, session_id: str, signal: str = Query(...)) -> Any:
        r = state.reader(store_id, session_id)
        _signal(r, signal)
        total = len(r)
        norm, sparsity = r.stats(signal, 0, total)
        arr = np.stack([np.asarray(norm, np.float32), np.asarray(sparsity, np.float32)])
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        body = encode_array(arr, kind="stats", signal=signal, start=0, stop=arr.shape[1], total=total)
        return Response(body, media_type=MEDIA_TYPE)

    def _parse_key(key: str) -> tuple[str, str]:
        parts = key.split("/")
        if len(parts) != 2:
            raise NotFound("a session key is STORE/SESSION")
        return parts[0], parts[1]

    @app.get("/api/compare")
    def compare(a: str = Query(...), b: str = Query(...)) -> Any:
        ra = state.reader(*_parse_key(a))
        rb = state.reader(*_parse_key(b))
        why = comparable(ra, rb)
        if why:
            return JSONResponse({"comparable": False, "error": f"these sessions cannot be compared: {why}"}, 409)
        return {"comparable": True, "n_frames": min(len(ra), len(rb))}

    @app.websocket("/api/sessions/{store_id}/{session_id}/live")
    async def live_progress(ws: WebSocket, store_id: str, session_id: str) -> None:
        try:
            r = await asyncio.to_thread(state.reader, store_id, session_id, True)
        except NotFound:
            await ws.close(code=4404, reason="no such session")
            return
        await ws.accept()
        last: tuple[int, str] | None = None
        try:
            while True:
                n, status = len(r), r.status
                if (n, status) != last:
                    last = (n, status)
                    await ws.send_json(
                        _clean(
                            {
                                "type": "progress",
                                "n_frames": n,
                                "status": status,
                                "meta": {"stop_reason": r.meta.get("stop_reason", "")},
                            }
                        )
                    )
                if status != "recording":
                    await ws.close(code=1000)
                    return
                await asyncio.sleep(state.poll_interval)
                r = await asyncio.to_thread(state.reader, store_id, session_id, True)
        except (WebSocketDisconnect, RuntimeError):
            return
        except NotFound:
            await ws.close(code=4404)

    if state.live is not None and hasattr(state.live, "attach"):
        state.live.attach(app, state)

    app.add_middleware(SecurityMiddleware, policy=state.policy)
    return app
