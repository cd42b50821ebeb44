""":class:`LiveChat`: the viewer's live plug-in, its clients and the turn they share."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from ..._errors import CaptureError
from ...settings import CHAT_DEFAULTS
from .protocol import CLIENT_QUEUE_BYTES, MAX_CLIENT_MESSAGE, MAX_NEW_TOKENS, ChatSettings, message
from .requests import shown
from .sendqueue import Message, SendQueue
from .steering import check_turn, rerun_request
from .turn import Turn

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.websockets import WebSocket

    from ...store import FrameStore
    from ..state import ViewerState
    from .engines import Engine

log = logging.getLogger("llmri.viewer")


class LiveChat:
    """The viewer's live plug-in: ``create_app(stores, live=LiveChat(engine))``.

    Parameters
    ----------
    engine
        An :class:`~llmri.viewer.live.engines.Engine`: a :class:`~llmri.viewer.live.ModelEngine` or
        a :class:`~llmri.viewer.live.ChatOnlyEngine`. The chat owns it: :meth:`close` closes it.
    store_id
        Which of the viewer's stores records the live sessions (default ``"s0"``, the first).
    client_queue_bytes
        Bound on the bytes queued for one WebSocket client (see :class:`~.sendqueue.SendQueue`).
    idle_stop_seconds
        When the last page disconnects mid-turn, the turn is stopped after this many seconds if no
        page has come back (a reload keeps it going); ``None`` never stops it.

    Threads: everything here runs on the server's event loop except :meth:`Turn.generate`, which runs
    on the turn's worker thread and reaches the clients only through :meth:`_post`.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        store_id: str = "s0",
        client_queue_bytes: int = CLIENT_QUEUE_BYTES,
        idle_stop_seconds: float | None = 5.0,
    ) -> None:
        self.engine = engine
        self.store_id = store_id
        self.client_queue_bytes = int(client_queue_bytes)
        self.idle_stop_seconds = idle_stop_seconds
        self.conns: dict[int, SendQueue] = {}
        self.run: Turn | None = None
        self.history: list[dict[str, Any]] = []  # finished turns: {"session", "status", "stop_reason"}
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._state: ViewerState | None = None

    # -- plumbing --------------------------------------------------------------------------
    def attach(self, app: FastAPI, state: ViewerState) -> None:
        """Add ``WS /api/live`` to ``app`` (called by :func:`~llmri.viewer.create_app`)."""
        from .routes import live_router

        self._state = state
        app.include_router(live_router(self.serve))

    def describe(self) -> dict[str, Any]:
        info = self.engine.describe()
        info["store"] = self.store_id
        info["max_new_tokens"] = MAX_NEW_TOKENS
        # what a turn gets where the page sends nothing: the settings table's conversation defaults
        info["defaults"] = {k: getattr(CHAT_DEFAULTS, k) for k in ("max_new_tokens", "temperature", "top_p", "seed")}
        return info

    def _store(self) -> FrameStore:
        entry = self._state.stores.get(self.store_id) if self._state is not None else None
        if entry is None:
            raise CaptureError(f"no store {self.store_id!r} to record live sessions in")
        return entry.store

    def _broadcast(self, item: Message, session: str | None = None) -> None:
        for q in list(self.conns.values()):
            q.offer(item, session)

    def _post(self, item: Message, session: str | None = None) -> None:
        """From the worker thread: hand a message to the event loop (never blocks generation)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._broadcast, item, session)
            except RuntimeError:  # the loop closed under us: the server is shutting down
                pass

    # -- the WebSocket -----------------------------------------------------------------------
    async def serve(self, ws: WebSocket) -> None:
        """Serve one client on ``ws`` until it disconnects."""
        from starlette.websockets import WebSocketDisconnect

        self._loop = asyncio.get_running_loop()
        await ws.accept()
        self._next_id += 1
        conn_id = self._next_id
        conn = SendQueue(self.client_queue_bytes)
        self.conns[conn_id] = conn
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        run = self.run
        hello = {"type": "hello", **self.describe(), "you": conn_id}
        hello["running"] = {"session": run.session, "messages": run.messages, "settings": run.settings} if run else None
        conn.offer(message(**hello))
        sender = asyncio.create_task(self._sender(ws, conn))
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                reply = self._receive(conn_id, msg.get("text"))
                if reply is not None:
                    conn.offer(reply)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            conn.close()
            self.conns.pop(conn_id, None)
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

    @staticmethod
    async def _sender(ws: WebSocket, conn: SendQueue) -> None:
        while (item := await conn.get()) is not None:
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_text(item)
            conn.sent += 1

    def _receive(self, conn_id: int, text: str | None) -> str | None:
        """Act on one client message; the reply for that client alone, if any."""
        if text is None:
            return message(type="error", message="send JSON text messages")
        if len(text) > MAX_CLIENT_MESSAGE:
            return message(type="error", message="message too large (1 MiB at most)")
        try:
            data = json.loads(text)
        except RecursionError:
            return message(type="error", message="JSON nested too deeply")
        except ValueError:  # also an integer beyond Python's digit limit
            return message(type="error", message="not JSON")
        try:
            return self._handle(conn_id, data if isinstance(data, dict) else {})
        except Exception:  # noqa: BLE001 - one bad message must not drop the page's socket
            log.exception("live chat: a client message could not be handled")
            return message(type="error", message="this message could not be handled")

    def _handle(self, conn_id: int, data: dict[str, Any]) -> str | None:
        kind = data.get("type")
        if kind == "ping":
            return message(type="pong")
        if kind == "stop":
            if self.run is not None:
                self.run.stop()
            return None
        if kind != "chat":
            return message(type="error", message=f"unknown message type {shown(kind)}")
        if self._state is not None and self._state.model_lock.locked():
            return message(type="busy", message="the model is running a patched cell: send again in a moment")
        if self.run is not None:
            who = "this page" if self.run.by == conn_id else "another page"
            return message(
                type="busy",
                message=f"the model is still answering a message sent from {who}: "
                "wait for it to finish or press Stop (one answer at a time)",
            )
        try:
            if data.get("rerun") is not None:
                messages, settings = self._rerun(data)
            else:
                messages, settings = check_turn(data, self.engine)
        except CaptureError as exc:
            return message(type="error", message=str(exc))
        self.start(messages, settings, by=conn_id)
        return None

    def _rerun(self, data: dict[str, Any]) -> tuple[list[dict[str, str]], ChatSettings]:
        """A ``rerun`` request: the recorded answer's question again, checked as a chat message."""
        from ..._errors import LlmriError

        key = data.get("rerun")
        parts = key.split("/") if isinstance(key, str) else []
        if len(parts) != 2 or self._state is None:
            raise CaptureError("rerun names a session as STORE/SESSION")
        try:
            r = self._state.reader(parts[0], parts[1])
        except LlmriError as exc:
            raise CaptureError(f"rerun: {exc}") from None
        model = getattr(self.engine, "model", None)
        messages, settings = check_turn(rerun_request(r, data, getattr(model, "fingerprint", None)), self.engine)
        settings["baseline"] = r.id
        return messages, settings

    # -- generation ----------------------------------------------------------------------------
    def start(self, messages: list[dict[str, str]], settings: ChatSettings, by: int = 0) -> Turn:
        """Start a turn on a worker thread (the caller checked that none is running)."""
        run = Turn(by, messages, settings)
        self.run = run
        run.thread = threading.Thread(target=self._work, args=(run,), name="llmri-live", daemon=True)
        run.thread.start()
        return run

    def _work(self, run: Turn) -> None:
        record = run.generate(self.engine, self._store, self.store_id, self._post)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._finish, run, record)
                return
            except RuntimeError:
                pass
        self.run = None

    def _finish(self, run: Turn, record: dict[str, Any]) -> None:
        if self.run is run:
            self.run = None
        self.history.append(record)
        self._broadcast(message(**record), record.get("session"))

    def stats(self) -> dict[int, dict[str, int]]:
        """Per-client queue figures (tests and diagnostics)."""
        return {conn_id: q.stats() for conn_id, q in self.conns.items()}

    def close(self) -> None:
        """Stop the running turn and release the engine."""
        run = self.run
        if run is not None:
            run.stop()
            if run.thread is not None:
                run.thread.join(timeout=10)
        self.engine.close()
