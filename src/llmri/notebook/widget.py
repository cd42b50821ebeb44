""":class:`Viewer`: the anywidget that shows ``llmri view``'s client in a notebook output.

The browser side (``widget.js``) asks for every page, module and ``/api`` answer over the widget's comm
(custom messages: ``{"op": "get", "id", "url"}``); this side answers each through the viewer's own ASGI
app in-process (:class:`~llmri.notebook.bridge.AppBridge`) and replies ``{"op": "reply", "id",
"status", "type"}`` with the body as one binary buffer, so the bytes are those ``llmri view`` sends.
WebSockets (``ws-open`` / ``ws-send`` / ``ws-close``, answered with ``{"op": "ws", "event"}``) carry the
``/live`` progress of a session being recorded. Requests are answered on the bridge's thread: the
kernel is free while frames are read.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import anywidget
import traitlets

from .._errors import one_line
from .bridge import AppBridge, AsgiSocket, Reply
from .sources import Shown, StreamRunner, resolve

log = logging.getLogger("llmri.notebook")

#: Seconds between the viewer's checks of a session being recorded (``llmri view``'s is 0.5): nothing
#: goes over a network, and a stream's frames should appear as they come.
POLL_INTERVAL = 0.1


class Viewer(anywidget.AnyWidget):
    """The viewer of ``source`` (what :func:`llmri.show` takes) as a widget; display it, or let it be a
    cell's last value. ``t`` is the frame shown and ``session`` its key (``"s0/ID"``): both follow the
    viewer, and setting them moves it. ``error`` is the one line that ended a stream shown, if one did.
    """

    _esm = (resources.files("llmri.notebook") / "widget.js").read_text(encoding="utf-8")
    height = traitlets.Int(640).tag(sync=True)
    session = traitlets.Unicode("").tag(sync=True)
    t = traitlets.Int(0).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(self, source: Any, *, session: str | None = None, t: int = 0, height: int = 640) -> None:
        from ..viewer import create_app

        shown: Shown = resolve(source, session)
        self.stores = shown.stores
        self.runners: list[StreamRunner] = shown.runners
        self.app = create_app(shown.stores, poll_interval=POLL_INTERVAL)
        self.bridge = AppBridge(self.app)
        self._sockets: dict[str, AsgiSocket] = {}
        super().__init__(height=int(height), session=shown.key, t=int(t))
        for r in self.runners:
            r.on_end = self._stream_ended
            if r.done.is_set():
                self._stream_ended()
        self.on_msg(self._on_msg)

    # -- what the browser asks -----------------------------------------------------------------
    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or not isinstance(content.get("id"), str):
            return
        op, rid = content.get("op"), content["id"]
        if op == "get":
            url = str(content.get("url", ""))
            future = self.bridge.submit(self.bridge.get(url))
            future.add_done_callback(lambda f: self._reply(rid, url, f))
        elif op == "ws-open":
            self._sockets[rid] = self.bridge.websocket(str(content.get("url", "")), lambda k, v: self._ws(rid, k, v))
        elif op == "ws-send" and rid in self._sockets:
            self._sockets[rid].send_text(str(content.get("data", "")))
        elif op == "ws-close" and rid in self._sockets:
            self._sockets.pop(rid).close(int(content.get("code") or 1000))

    def _reply(self, rid: str, url: str, future: Any) -> None:
        try:
            r: Reply = future.result()
        except Exception as exc:  # noqa: BLE001 - answered like the server's own 500
            log.warning("notebook viewer: %s failed: %s", url, one_line(exc))
            r = Reply(500, "application/json", b'{"error":"internal error (the kernel\'s log says why)"}')
        self.send({"op": "reply", "id": rid, "status": r.status, "type": r.content_type}, [r.body])

    def _ws(self, rid: str, kind: str, value: Any) -> None:
        if kind == "open":
            self.send({"op": "ws", "id": rid, "event": "open"})
        elif kind == "text":
            self.send({"op": "ws", "id": rid, "event": "text", "data": value})
        elif kind == "bytes":
            self.send({"op": "ws", "id": rid, "event": "bytes"}, [value])
        elif kind == "close":
            self._sockets.pop(rid, None)
            code, reason = value
            self.send({"op": "ws", "id": rid, "event": "close", "code": code, "reason": reason})

    # -- streams -----------------------------------------------------------------------------
    def _stream_ended(self) -> None:
        errors = [r.error for r in self.runners if r.error]
        if errors:
            self.error = f"llmri: the capture stopped: {errors[0]}"

    def stop(self) -> None:
        """Stop the streams this viewer runs (what they produced so far stays)."""
        for r in self.runners:
            r.stop()

    def wait(self, timeout: float | None = None) -> Any:
        """Wait for the streams to end; returns the session of the first one (None without a stream)."""
        for r in self.runners:
            r.done.wait(timeout)
        return self.runners[0].session if self.runners else None

    @property
    def sessions(self) -> list[Any]:
        """The sessions of the streams shown (in memory, growing while they run)."""
        return [r.session for r in self.runners if r.session is not None]

    def close(self) -> None:
        """Close the widget, its sockets and its bridge (the streams it runs go on: :meth:`stop` them)."""
        for sock in list(getattr(self, "_sockets", {}).values()):
            sock.close(1001)
        getattr(self, "_sockets", {}).clear()
        if getattr(self, "bridge", None) is not None:
            self.bridge.close()
        super().close()

    def __repr__(self) -> str:
        what = self.session or ", ".join(self.stores)
        return f"llmri viewer: {what} (shown in JupyterLab, Notebook 7 or VS Code)"
