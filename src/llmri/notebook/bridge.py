"""The viewer's own ASGI app, called in-process: no socket, no port.

:class:`AppBridge` runs one event loop on a daemon thread and answers the client's requests through the
app :func:`~llmri.viewer.create_app` built, so the notebook widget gets exactly what ``llmri view``
serves (the same routes, errors, security checks and bytes). HTTP requests go through httpx's
``ASGITransport``; WebSockets (the ``/live`` progress of a session being recorded) through
:class:`AsgiSocket`, a minimal ASGI WebSocket client. Every request carries the ``Host`` (and, for
WebSockets, the ``Origin``) of a loopback viewer, as a browser on ``llmri view``'s page would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("llmri.notebook")

#: The name every in-process request is addressed to (a loopback viewer with no port).
HOST = "127.0.0.1"
ORIGIN = f"http://{HOST}"


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, content type and the body's bytes."""

    status: int
    content_type: str
    body: bytes


class AppBridge:
    """``app`` answered on a private event loop (a daemon thread); thread-safe to call from anywhere."""

    def __init__(self, app: Any) -> None:
        import httpx

        self.app = app
        self._closing = False
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="llmri-notebook", daemon=True)
        self._thread.start()
        transport = httpx.ASGITransport(app=app)
        self._client = httpx.AsyncClient(transport=transport, base_url=ORIGIN, timeout=None)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        """Run ``coro`` on the bridge's loop; the future resolves with its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def get(self, url: str) -> Reply:
        """``GET url`` (a path and query, e.g. ``/api/sessions``), as the viewer's page would send it."""
        if not url.startswith("/"):
            return Reply(400, "application/json", b'{"error":"not a path"}')
        res = await self._client.get(url, headers={"sec-fetch-site": "same-origin"})
        return Reply(res.status_code, res.headers.get("content-type", ""), res.content)

    def get_sync(self, url: str, timeout: float = 60) -> Reply:
        """:meth:`get` from a thread that is not the bridge's (tests, the widget's first page)."""
        return self.submit(self.get(url)).result(timeout)

    def websocket(self, path: str, on_event: Callable[[str, Any], None]) -> AsgiSocket:
        """Open a WebSocket on ``path``; ``on_event(kind, value)`` gets ``("open", None)``,
        ``("text", str)``, ``("bytes", bytes)`` and finally ``("close", (code, reason))``."""
        sock = AsgiSocket(self, path, on_event)
        self.loop.call_soon_threadsafe(sock.start)
        return sock

    def close(self) -> None:
        """Stop the loop (idempotent); requests after this are not answered."""
        if self._closing:
            return
        self._closing = True

        async def shutdown() -> None:
            await self._client.aclose()

        try:
            self.submit(shutdown()).result(5)
        except Exception:  # noqa: BLE001 - closing what is already broken
            log.debug("notebook bridge: closing the client failed", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class AsgiSocket:
    """One WebSocket connection to the app, driven on the bridge's loop (an ASGI client of ~40 lines:
    httpx has no WebSocket transport). A close before ``accept`` is reported as code 1006, as a
    browser sees a refused upgrade."""

    def __init__(self, bridge: AppBridge, path: str, on_event: Callable[[str, Any], None]) -> None:
        self.bridge = bridge
        path, _, query = path.partition("?")
        self.path, self.query = path, query
        self.on_event = on_event
        self._inbox: asyncio.Queue | None = None
        self._accepted = False
        self._closed = False

    def start(self) -> None:
        self._inbox = asyncio.Queue()
        self._inbox.put_nowait({"type": "websocket.connect"})
        self.bridge.loop.create_task(self._run())

    def _scope(self) -> dict[str, Any]:
        return {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": "",
            "query_string": self.query.encode(),
            "headers": [(b"host", HOST.encode()), (b"origin", ORIGIN.encode())],
            "client": (HOST, 0),
            "server": (HOST, 80),
            "subprotocols": [],
            "state": {},
        }

    async def _run(self) -> None:
        assert self._inbox is not None
        inbox = self._inbox

        async def receive() -> dict[str, Any]:
            return await inbox.get()

        async def send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if self._closed:  # as a server does once the client has gone
                from starlette.websockets import WebSocketDisconnect

                raise WebSocketDisconnect(1000)
            if kind == "websocket.accept":
                self._accepted = True
                self.on_event("open", None)
            elif kind == "websocket.send":
                if message.get("text") is not None:
                    self.on_event("text", message["text"])
                else:
                    self.on_event("bytes", message.get("bytes") or b"")
            elif kind == "websocket.close":
                self._finish(message.get("code", 1000) if self._accepted else 1006, message.get("reason") or "")

        try:
            await self.bridge.app(self._scope(), receive, send)
        except Exception as exc:  # noqa: BLE001 - the app's own failure ends this socket, not the kernel
            if not self._closed:  # (after the client closed, the app's next send raises: expected)
                log.warning("notebook bridge: %s failed: %s", self.path, exc)
            self._finish(1011, "")
        self._finish(1000 if self._accepted else 1006, "")

    def _finish(self, code: int, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self.on_event("close", (code, reason))

    def send_text(self, text: str) -> None:
        """A message from the client (thread-safe)."""
        self.bridge.loop.call_soon_threadsafe(self._put, {"type": "websocket.receive", "text": text})

    def close(self, code: int = 1000) -> None:
        """The client closes (thread-safe): the app sees a disconnect; no close event is reported."""
        self._closed = True
        self.bridge.loop.call_soon_threadsafe(self._put, {"type": "websocket.disconnect", "code": code})

    def _put(self, message: dict[str, Any]) -> None:
        if self._inbox is not None:
            self._inbox.put_nowait(message)
