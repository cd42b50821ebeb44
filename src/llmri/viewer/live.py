"""Live chat for the viewer: type a message, watch each token's frame arrive as the answer streams.

:class:`LiveChat` is the viewer's live plug-in (``create_app(stores, live=LiveChat(...))``). It adds
one WebSocket, ``/api/live``, behind the same Host / Origin / token guards as every other route
(:class:`~llmri.viewer.security.SecurityMiddleware` wraps the whole app). Two engines sit behind it:

* :class:`ModelEngine`: a local model (``llmri view --model SPEC``), recorded with
  :func:`llmri.stream` (activations, all signals the backend offers).
* :class:`ChatOnlyEngine`: an OpenAI-compatible server fixed at launch (``--openai-url``), recorded
  with :class:`~llmri.chatonly.ChatOnlyStream` (tokens and logprobs, no activations). The URL and
  the API key live only in the server process: the browser can never name another URL, and the
  key is never sent to it (``hello`` carries the URL without credentials or query).

Conversations
-------------
Each turn is one session in the viewer's first store: its prompt is the whole conversation so far
(the chat template applies to the whole history, so the prompt frames of turn *n* show how the
model reads turns 1..n-1), and its generated rows are the new answer. ``meta["conversation"]`` (a
random id) and ``meta["turn"]`` (0, 1, ...) tie the turns together. Frames are appended to the store
as they are generated (crash-consistent: a closed tab, a dropped connection or a killed server
loses at most the uncommitted tail).

Protocol (``WS /api/live``)
---------------------------
Client to server, JSON text messages:

``{"type": "chat", "messages": [{"role", "content"}, ...], "settings": {...}}``
    Start a turn. ``messages`` is the whole conversation (roles ``system``/``user``/``assistant``),
    ending with the user's new message. ``settings``: ``max_new_tokens``, ``temperature``,
    ``top_p``, ``seed``, ``signals`` (list), ``reducer`` and ``ignore_eos`` (model mode), ``conversation`` and
    ``turn`` (echoed into the session's meta). Refused with ``busy`` while another turn runs (one
    generation per model at a time; every tab sees the running turn and may stop it).
``{"type": "stop"}``
    End the running turn now; everything generated so far is kept (``stop_reason: "stopped"``).
``{"type": "ping"}``
    Answered with ``{"type": "pong"}``.

A message that is not JSON, nested too deeply, larger than :data:`MAX_CLIENT_MESSAGE` or out of range
(numbers are checked as exact integers, so a 400-digit seed is refused, not overflowed) gets one
``error`` line; the socket stays open.

Server to client, JSON text messages: ``hello`` (mode, model, signals, reducers, limits, the running
turn if any), ``started`` (``session`` = ``"store/id"``, ``messages``, ``settings``, ``special_ids``,
``yours``), ``done`` (``session``, ``status``, ``stop_reason``, ``n_frames``), ``error``
(``message``: one line; the server keeps running), ``busy`` (``message``), ``resync`` (this client
fell behind: its queued frames were dropped, the rest of the turn still comes; fetch the gap from
the store over REST), ``pong``.

Server to client, binary messages: one or more frames in the replay encoding
(:mod:`llmri.viewer.encoding`) with ``kind: "live"``: the array is ``[n, signals, layers, H, W]``
float16 (``[n, 0]`` in chat-only mode), the header has ``session``, ``start``, ``stop``, ``signals``,
``tokens`` (``n`` token records as the REST ``/tokens`` route gives them) and ``t_model`` (Unix time
when the last of these frames left the model, for latency measurements). A token's frame and its
text travel in the same message, so the page can never show the text before the frame. Prompt
frames are batched (up to :data:`PROMPT_BATCH` per message); generated frames go one per message.

Slow clients
------------
Each connection has a send queue bounded in bytes (``client_queue_bytes``). A client that cannot
keep up (or never reads) gets its queue dropped and one ``resync`` message instead: the frames are
in the store, so it catches up over REST, and the server's memory stays bounded whatever the
client does. Generation never waits for a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import CaptureError, LlmriError
from .encoding import encode_array

#: Prompt frames sent per message at most (generated frames always go one per message).
PROMPT_BATCH = 32
#: Default bound on the bytes queued for one WebSocket client.
CLIENT_QUEUE_BYTES = 32 << 20
#: Largest client message accepted (a conversation as JSON).
MAX_CLIENT_MESSAGE = 1 << 20
MAX_MESSAGES = 256
MAX_NEW_TOKENS = 2048
ROLES = ("system", "user", "assistant")
REDUCERS = ("random", "ipca", "neurons")
log = logging.getLogger("llmri.viewer")


def _one_line(exc: BaseException | str, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- engines -------------------------------------------------------------------------------------


class ModelEngine:
    """Generates with a local model through :func:`llmri.stream` (activations recorded).

    ``model``: a :class:`~llmri.models.LoadedModel` (or anything :func:`llmri.stream` accepts, such
    as :class:`~llmri.backends.synthetic.SyntheticModel`); ``backend``: the capture backend name
    (``None``: the model's own, or ``hf``).
    """

    mode = "model"

    def __init__(self, model: Any, backend: str | None = None) -> None:
        from ..capture import _as_model, _backend_for

        self.model = _as_model(model)
        self.backend, cls = _backend_for(self.model, backend)
        self.signals = [s for s in ("resid", "attn", "mlp") if s in getattr(cls, "provides", ())]
        describe = getattr(self.model, "describe", None)
        info = describe() if callable(describe) else {}
        self.name = str(info.get("name") or type(self.model).__name__)
        self.n_layers = info.get("n_layers")

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "model": self.name,
            "backend": self.backend,
            "signals": self.signals,
            "reducers": list(REDUCERS),
            "n_layers": self.n_layers,
        }

    def open(self, messages: list[dict[str, str]], settings: dict[str, Any], store: Any, meta: dict[str, Any]) -> Any:
        from ..capture import CaptureStream

        return CaptureStream(
            self.model,
            messages,
            max_new_tokens=settings["max_new_tokens"],
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            seed=settings["seed"],
            signals=settings["signals"],
            reducer=settings["reducer"],
            backend=self.backend,
            ignore_eos=settings.get("ignore_eos", False),
            store=store,
            meta=meta,
        )

    def close(self) -> None:
        pass


class ChatOnlyEngine:
    """Generates through an OpenAI-compatible server fixed at launch (no activations).

    ``client``: a :class:`~llmri.chatonly.ChatOnlyClient` (URL, model and key are fixed in it).
    """

    mode = "chat-only"

    def __init__(self, client: Any) -> None:
        self.client = client
        self.signals: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "model": self.client.model or "(the server's model)",
            "url": self.client.url,  # without credentials, query or fragment
            "backend": "openai",
            "signals": [],
            "reducers": [],
        }

    def open(self, messages: list[dict[str, str]], settings: dict[str, Any], store: Any, meta: dict[str, Any]) -> Any:
        return self.client.stream(
            messages,
            max_new_tokens=settings["max_new_tokens"],
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            seed=settings["seed"],
            store=store,
            meta=meta,
        )

    def close(self) -> None:
        self.client.close()


# -- validation ----------------------------------------------------------------------------------


def _shown(value: Any, limit: int = 40) -> str:
    """A client's value in an error message: short and one line, never the repr of a huge or deep value."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a JSON {'object' if isinstance(value, dict) else 'array' if isinstance(value, list) else 'value'}"


def _number(settings: dict[str, Any], key: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
    value = settings.get(key, default)
    if value is None or value == "":
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise CaptureError(f"{key} must be a number, got {_shown(value)}") from None
    # An int is compared exactly: JSON integers have no size limit, and math.isfinite(10**400) overflows.
    if not (lo <= value <= hi) or (isinstance(value, float) and not math.isfinite(value)):
        raise CaptureError(f"{key} must be between {lo:g} and {hi:g}, got {_shown(value)}")
    if integer:
        if value != int(value):
            raise CaptureError(f"{key} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def check_request(data: Any, engine: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Validate a ``chat`` message: ``(messages, settings)``; raises CaptureError with one line."""
    msgs = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise CaptureError("messages must be a non-empty list of {role, content}")
    if len(msgs) > MAX_MESSAGES:
        raise CaptureError(f"a conversation holds at most {MAX_MESSAGES} messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise CaptureError(f"message {i} must be {{role: system|user|assistant, content: text}}")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        raise CaptureError("the last message must be a non-empty user message")
    raw = data.get("settings") or {}
    if not isinstance(raw, dict):
        raise CaptureError("settings must be an object")
    settings: dict[str, Any] = {
        "max_new_tokens": _number(raw, "max_new_tokens", 128, 1, MAX_NEW_TOKENS, integer=True),
        "temperature": _number(raw, "temperature", 0.0, 0.0, 5.0),
        "top_p": _number(raw, "top_p", 1.0, 0.0, 1.0),
        "seed": _number(raw, "seed", 0, 0, 2**31 - 1, integer=True),
    }
    if settings["top_p"] <= 0:
        raise CaptureError("top_p must be above 0")
    if engine.mode == "model":
        sigs = raw.get("signals") or list(engine.signals)
        if isinstance(sigs, str):
            sigs = [sigs]
        if not isinstance(sigs, list) or not all(isinstance(s, str) for s in sigs) or not sigs:
            raise CaptureError("signals must be a non-empty list")
        bad = [s for s in sigs if s not in engine.signals]
        if bad:
            raise CaptureError(f"unknown signal {bad[0]!r}: this model offers {', '.join(engine.signals)}")
        settings["signals"] = [s for s in engine.signals if s in sigs]
        reducer = raw.get("reducer") or "random"
        if reducer not in REDUCERS:
            raise CaptureError(f"reducer must be one of {', '.join(REDUCERS)}")
        settings["reducer"] = reducer
        settings["ignore_eos"] = raw.get("ignore_eos") is True  # benchmarks: every run makes max_new_tokens
    conv = raw.get("conversation")
    settings["conversation"] = conv if isinstance(conv, str) and len(conv) <= 64 else secrets.token_hex(6)
    turn = raw.get("turn")
    settings["turn"] = int(turn) if isinstance(turn, int) and not isinstance(turn, bool) and 0 <= turn < 10**6 else 0
    return out, settings


# -- connections and runs ------------------------------------------------------------------------


@dataclass
class _Conn:
    """One WebSocket client: a send queue bounded in bytes, drained by its own sender task."""

    id: int
    limit: int
    queue: deque = field(default_factory=deque)
    nbytes: int = 0
    peak_bytes: int = 0
    dropped: int = 0
    sent: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def offer(self, item: bytes | str, session: str | None) -> None:
        if self.closed:
            return
        size = len(item)
        # Bound: ``limit`` plus the one message that crossed it (a prompt batch may exceed a small limit alone).
        if self.nbytes >= self.limit:
            # Too far behind: drop what is queued and say so once; the frames are in the store.
            self.queue.clear()
            self.nbytes = 0
            self.dropped += 1
            note = json.dumps({"type": "resync", "session": session, "reason": "this page fell behind the stream"})
            self.queue.append(note)
            self.nbytes += len(note)
            if isinstance(item, bytes):
                self._peak()
                self.wake.set()
                return
        self.queue.append(item)
        self.nbytes += size
        self._peak()
        self.wake.set()

    def _peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.nbytes)


@dataclass
class _Run:
    """The turn being generated."""

    by: int
    messages: list[dict[str, str]]
    settings: dict[str, Any]
    stream: Any = None
    session: str | None = None
    stop_requested: bool = False
    started: float = field(default_factory=time.monotonic)
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        with self.lock:
            self.stop_requested = True
            st = self.stream
        if st is not None:
            st.stop()


def _header_token(frame: Any) -> dict[str, Any]:
    d = frame.token.to_dict()
    for a in d["top"]:
        if not math.isfinite(a["prob"]):
            a["prob"] = 0.0
    return d


class LiveChat:
    """The viewer's live plug-in: ``create_app(stores, live=LiveChat(engine))``.

    Parameters
    ----------
    engine
        A :class:`ModelEngine` or :class:`ChatOnlyEngine`.
    store_id
        Which of the viewer's stores records the live sessions (default ``"s0"``, the first).
    client_queue_bytes
        Bound on the bytes queued for one WebSocket client (see "Slow clients" in the module doc).
    idle_stop_seconds
        When the last page disconnects mid-turn, the turn is stopped after this many seconds if no
        page has come back (a reload keeps it going); ``None`` never stops it.
    """

    def __init__(
        self,
        engine: Any,
        *,
        store_id: str = "s0",
        client_queue_bytes: int = CLIENT_QUEUE_BYTES,
        idle_stop_seconds: float | None = 5.0,
    ) -> None:
        self.engine = engine
        self.store_id = store_id
        self.client_queue_bytes = int(client_queue_bytes)
        self.idle_stop_seconds = idle_stop_seconds
        self.conns: dict[int, _Conn] = {}
        self.run: _Run | None = None
        self.history: list[dict[str, Any]] = []  # finished turns: {"session", "status", "stop_reason"}
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._state: Any = None

    # -- plumbing --------------------------------------------------------------------------
    def attach(self, app: Any, state: Any) -> None:
        """Add ``WS /api/live`` to ``app`` (called by :func:`~llmri.viewer.app.create_app`)."""
        from fastapi import WebSocket

        self._state = state
        plugin = self

        async def live_chat(ws: WebSocket) -> None:
            await plugin.serve(ws)

        # This module uses postponed annotations; FastAPI needs the real class to inject the socket.
        live_chat.__annotations__ = {"ws": WebSocket, "return": None}
        app.add_api_websocket_route("/api/live", live_chat)

    def describe(self) -> dict[str, Any]:
        info = self.engine.describe()
        info["store"] = self.store_id
        info["max_new_tokens"] = MAX_NEW_TOKENS
        return info

    def _store(self) -> Any:
        entry = self._state.stores.get(self.store_id) if self._state is not None else None
        if entry is None:
            raise CaptureError(f"no store {self.store_id!r} to record live sessions in")
        return entry.store

    def _broadcast(self, item: bytes | str, session: str | None = None) -> None:
        for c in list(self.conns.values()):
            c.offer(item, session)

    def _post(self, item: bytes | str, session: str | None = None) -> None:
        """From the worker thread: hand a message to the event loop (never blocks generation)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._broadcast, item, session)
            except RuntimeError:  # the loop closed under us: the server is shutting down
                pass

    def _json(self, **msg: Any) -> str:
        return json.dumps(msg, allow_nan=False, default=str)

    # -- the WebSocket -----------------------------------------------------------------------
    async def serve(self, ws: Any) -> None:
        from starlette.websockets import WebSocketDisconnect

        self._loop = asyncio.get_running_loop()
        await ws.accept()
        self._next_id += 1
        conn = _Conn(self._next_id, self.client_queue_bytes)
        self.conns[conn.id] = conn
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        run = self.run
        hello = {"type": "hello", **self.describe(), "you": conn.id}
        hello["running"] = {"session": run.session, "messages": run.messages, "settings": run.settings} if run else None
        conn.offer(self._json(**hello), None)
        sender = asyncio.create_task(self._sender(ws, conn))
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                text = msg.get("text")
                if text is None:
                    conn.offer(self._json(type="error", message="send JSON text messages"), None)
                    continue
                if len(text) > MAX_CLIENT_MESSAGE:
                    conn.offer(self._json(type="error", message="message too large (1 MiB at most)"), None)
                    continue
                try:
                    data = json.loads(text)
                except RecursionError:
                    conn.offer(self._json(type="error", message="JSON nested too deeply"), None)
                    continue
                except ValueError:  # also an integer beyond Python's digit limit
                    conn.offer(self._json(type="error", message="not JSON"), None)
                    continue
                try:
                    self._handle(conn, data if isinstance(data, dict) else {})
                except Exception:  # noqa: BLE001 - one bad message must not drop the page's socket
                    log.exception("live chat: a client message could not be handled")
                    conn.offer(self._json(type="error", message="this message could not be handled"), None)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            conn.closed = True
            conn.wake.set()
            self.conns.pop(conn.id, None)
            sender.cancel()
            try:
                await sender
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the socket is gone either way
                pass
            if not self.conns and self.run is not None and self.idle_stop_seconds is not None:
                self._idle_handle = self._loop.call_later(self.idle_stop_seconds, self._stop_if_alone)

    def _stop_if_alone(self) -> None:
        self._idle_handle = None
        if not self.conns and self.run is not None:
            self.run.stop()

    async def _sender(self, ws: Any, conn: _Conn) -> None:
        while not conn.closed:
            if not conn.queue:
                conn.wake.clear()
                await conn.wake.wait()
                continue
            item = conn.queue.popleft()
            conn.nbytes -= len(item)
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_text(item)
            conn.sent += 1

    def _handle(self, conn: _Conn, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "ping":
            conn.offer(self._json(type="pong"), None)
        elif kind == "stop":
            if self.run is not None:
                self.run.stop()
        elif kind == "chat":
            if self.run is not None:
                who = "this page" if self.run.by == conn.id else "another page"
                conn.offer(
                    self._json(
                        type="busy",
                        message=f"the model is still answering a message sent from {who}: "
                        "wait for it to finish or press Stop (one answer at a time)",
                    ),
                    None,
                )
                return
            try:
                messages, settings = check_request(data, self.engine)
            except CaptureError as exc:
                conn.offer(self._json(type="error", message=str(exc)), None)
                return
            self.start(messages, settings, by=conn.id)
        else:
            conn.offer(self._json(type="error", message=f"unknown message type {_shown(kind)}"), None)

    # -- generation ----------------------------------------------------------------------------
    def start(self, messages: list[dict[str, str]], settings: dict[str, Any], by: int = 0) -> _Run:
        """Start a turn on a worker thread (the caller checked that none is running)."""
        run = _Run(by, messages, settings)
        self.run = run
        run.thread = threading.Thread(target=self._work, args=(run,), name="llmri-live", daemon=True)
        run.thread.start()
        return run

    def _finish(self, run: _Run, record: dict[str, Any]) -> None:
        if self.run is run:
            self.run = None
        self.history.append(record)
        self._broadcast(self._json(**record), record.get("session"))

    def _work(self, run: _Run) -> None:
        stream = None
        key = None
        n = 0
        status = "interrupted"
        try:
            meta = {"live": True, "conversation": run.settings["conversation"], "turn": run.settings["turn"]}
            stream = self.engine.open(run.messages, run.settings, self._store(), meta)
            with run.lock:
                run.stream = stream
                stop_now = run.stop_requested
            if stop_now:
                stream.stop()
            key = f"{self.store_id}/{stream.session_id}"
            run.session = key
            n_prompt = len(getattr(stream, "prompt_ids", None) or []) or len(run.messages) + 1
            signals = list(stream.meta.get("signals") or [])
            self._post(
                self._json(
                    type="started",
                    session=key,
                    by=run.by,
                    messages=run.messages,
                    settings=run.settings,
                    signals=signals,
                    special_ids=stream.meta.get("special_ids", []),
                    model=(stream.meta.get("model") or {}).get("name", ""),
                    chat_only=bool(stream.meta.get("chat_only")),
                ),
                key,
            )
            batch: list[Any] = []
            for frame in stream:
                n += 1
                batch.append(frame)
                if frame.token.role == "prompt" and len(batch) < PROMPT_BATCH and frame.index < n_prompt - 1:
                    continue
                self._send_frames(key, signals, batch)
                batch = []
            if batch:
                self._send_frames(key, signals, batch)
            status = "complete"
            reason = getattr(stream, "stop_reason", "")
            error = None
        except LlmriError as exc:
            reason, error = f"error: {_one_line(exc)}", _one_line(exc)
        except Exception as exc:  # noqa: BLE001 - a failing backend must not take the server down
            reason, error = f"error: {type(exc).__name__}", f"generation failed: {type(exc).__name__}: {_one_line(exc)}"
        if error is not None:
            self._post(self._json(type="error", session=key, message=error), key)
        record = {"type": "done", "session": key, "status": status, "stop_reason": reason, "n_frames": n}
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._finish, run, record)
                return
            except RuntimeError:
                pass
        self.run = None

    def _send_frames(self, key: str, signals: Sequence[str], frames: list[Any]) -> None:
        t_model = time.time()
        if signals:
            tiles = np.stack([np.stack([f.tiles[s] for s in signals]) for f in frames]).astype(np.float16)
        else:
            tiles = np.zeros((len(frames), 0), dtype=np.float16)
        header = {
            "kind": "live",
            "session": key,
            "start": frames[0].index,
            "stop": frames[-1].index + 1,
            "signals": list(signals),
            "tokens": [_header_token(f) for f in frames],
            "t_model": t_model,
        }
        try:
            msg = encode_array(tiles, **header)
        except ValueError:
            if len(frames) > 1:
                for f in frames:
                    self._send_frames(key, signals, [f])
                return
            # One token too big for a header (a huge text chunk): pages fetch it from the store.
            self._post(self._json(type="resync", session=key, reason="a token too large to stream"), key)
            return
        self._post(msg, key)

    def stats(self) -> dict[int, dict[str, int]]:
        """Per-client queue figures (tests and diagnostics)."""
        return {
            c.id: {"bytes": c.nbytes, "peak_bytes": c.peak_bytes, "dropped": c.dropped, "sent": c.sent}
            for c in self.conns.values()
        }

    def close(self) -> None:
        """Stop the running turn and release the engine."""
        run = self.run
        if run is not None:
            run.stop()
            if run.thread is not None:
                run.thread.join(timeout=10)
        self.engine.close()


def from_args(args: Any) -> LiveChat | None:
    """The plug-in ``llmri view`` options ask for (``--model`` or ``--openai-url``), or None."""
    import os

    model = getattr(args, "model", None)
    url = getattr(args, "openai_url", None)
    if model and url:
        raise CaptureError("give --model (activations) or --openai-url (chat-only), not both")
    if url:
        from ..backends.openai import ChatOnlyClient

        key = None
        var = getattr(args, "api_key_env", None)
        if var:
            key = os.environ.get(var)
            if not key:
                raise CaptureError(f"--api-key-env {var}: that environment variable is not set")
        client = ChatOnlyClient(url, model=getattr(args, "openai_model", None), api_key=key)
        try:  # learn the model's name now, so the page can show it; a server that is down is asked again later
            client.resolve_model()
        except CaptureError as exc:
            print(f"llmri view: warning: {exc} (asking again at the first message)", flush=True)
        return LiveChat(ChatOnlyEngine(client))
    if model:
        from ..models import load_model

        loaded = getattr(args, "loaded_model", None)
        if loaded is None:
            print(f"llmri view: loading model {model} for live chat...", flush=True)
            loaded = load_model(model)
        return LiveChat(ModelEngine(loaded))
    return None
