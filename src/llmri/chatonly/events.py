"""The event-stream reader: one chat request, sent and read on a worker thread, its answer handed to
the consumer as a bounded queue of events."""

from __future__ import annotations

import json
import queue
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from .._errors import CaptureError, one_line
from ..capture.decode import GenerationSettings
from ..frame import TOP_K
from .errors import http_error, network_error
from .rows import completion_as_chunk

#: A stream line longer than this is treated as malformed (a server must not make us buffer without bound).
MAX_LINE_BYTES = 1 << 20
#: Largest non-streamed body read (error bodies, a server that ignores ``stream: true``).
MAX_BODY_BYTES = 16 << 20
#: Events queued at most: a consumer that stops reading stalls the upstream read, not memory.
QUEUE_SIZE = 64


class ChatServer(Protocol):
    """What a chat stream needs of its server; :class:`~llmri.ChatOnlyClient` is one."""

    url: str
    model: str | None
    timeout: float | None

    @property
    def chat_url(self) -> str: ...

    def resolve_model(self) -> str | None: ...

    def post_chat(self, body: dict[str, Any]) -> Any: ...

    def close(self) -> None: ...


class AnswerReader:
    """Reads one answer from ``client`` for the consumer of :meth:`next_event`.

    :meth:`run` is the worker thread's body. It resolves the model name, posts the request (once
    more without logprobs if the server rejects them), and reads the event stream, or a plain JSON
    completion from a server that ignores ``stream: true``. What it learns arrives as
    ``(kind, value)`` events: ``("model", name)``, ``("no_logprobs", None)``, ``("chunk", dict)``
    per parsed chunk, ``("done", None)`` at ``[DONE]``, ``("eof", None)`` when the stream ended
    without it, ``("error", CaptureError)``, and always last ``("end", None)``. Setting ``stop``
    (then :meth:`abort`) ends the read at once: the connection is shut down, which wakes a read
    blocked on a silent server and tells the server to stop generating.
    """

    def __init__(
        self,
        client: ChatServer,
        messages: list[dict[str, str]],
        settings: GenerationSettings,
        *,
        send_seed: bool,
        logprobs: bool,
        stop: threading.Event,
    ) -> None:
        self._client = client
        self._messages = messages
        self._settings = settings
        self._send_seed = send_seed
        self._logprobs = logprobs
        self._stop = stop
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=QUEUE_SIZE)
        self._resp: Any = None
        self._resp_lock = threading.Lock()

    # -- the consumer's side ------------------------------------------------------------------
    def next_event(self) -> tuple[str, Any] | None:
        """The next event; ``None`` once ``stop`` is set."""
        while not self._stop.is_set():
            try:
                return self._q.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

    def abort(self) -> None:
        """Shut the connection down (from any thread)."""
        # Closing the socket from this thread would not wake a read blocked in the worker;
        # shutdown() does, and tells the server the client is gone.
        with self._resp_lock:
            resp = self._resp
        if resp is None:
            return
        try:
            ns = resp.extensions.get("network_stream")
            sock = ns.get_extra_info("socket") if ns is not None else None
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass

    # -- the worker's side --------------------------------------------------------------------
    def body(self, model: str | None, logprobs: bool) -> dict[str, Any]:
        """The JSON body of the request."""
        s = self._settings
        body: dict[str, Any] = {
            "messages": self._messages,
            "stream": True,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if model:
            body["model"] = model
        if self._send_seed:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = s.stop
        if logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = TOP_K
        return body

    def _put(self, item: tuple[str, Any]) -> bool:
        """Queue an event; bounded, so a consumer that stops reading stalls the upstream read."""
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        """Send the request and read the answer (the worker thread)."""
        import httpx

        c = self._client
        try:
            model = c.resolve_model()
            self._put(("model", model))
            logprobs = self._logprobs
            for attempt in range(2):
                resp = c.post_chat(self.body(model, logprobs))
                with self._resp_lock:
                    self._resp = resp
                if self._stop.is_set():
                    self.abort()
                try:
                    if resp.status_code >= 400:
                        body = self._read_body(resp, 4096)
                        if attempt == 0 and logprobs and resp.status_code in (400, 422) and b"logprob" in body.lower():
                            logprobs = False  # a server that refuses logprobs still streams text
                            self._put(("no_logprobs", None))
                            continue
                        raise http_error(resp.status_code, resp.reason_phrase, body, c.chat_url, model)
                    self._read_answer(resp)
                    return
                finally:
                    resp.close()
        except CaptureError as exc:
            if not self._stop.is_set():
                self._put(("error", exc))
        except httpx.HTTPError as exc:
            if not self._stop.is_set():
                self._put(("error", network_error(exc, c.url, c.timeout)))
        except Exception as exc:  # noqa: BLE001 - the consumer must hear of any failure, in one line
            if not self._stop.is_set():
                self._put(("error", CaptureError(f"chat with {c.url} failed: {type(exc).__name__}: {one_line(exc)}")))
        finally:
            # Always end the consumer's wait, whatever happened above.
            self._put(("end", None))

    def _read_body(self, resp: Any, limit: int) -> bytes:
        out = bytearray()
        for chunk in resp.iter_bytes():
            out += chunk
            if len(out) > limit:
                break
        return bytes(out[:limit])

    def _read_answer(self, resp: Any) -> None:
        url = self._client.chat_url
        ctype = resp.headers.get("content-type", "").lower()
        if "json" in ctype and "event-stream" not in ctype:
            # A server that ignores stream: true answers one JSON completion; treat it as one chunk.
            self._put(("chunk", completion_as_chunk(self._read_body(resp, MAX_BODY_BYTES), url)))
            self._put(("done", None))
            return
        if "event-stream" not in ctype:
            raise CaptureError(f"malformed stream from {url}: expected text/event-stream, got {ctype or 'no type'!r}")
        for data in self._events(resp, ctype):
            if self._stop.is_set():
                return
            if data.strip() == "[DONE]":
                self._put(("done", None))
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                raise CaptureError(f"malformed stream from {url}: an event is not JSON ({data[:60]!r})") from None
            if not self._put(("chunk", chunk)):
                return
        self._put(("eof", None))

    def _events(self, resp: Any, ctype: str) -> Iterator[str]:
        """The ``data`` of each server-sent event that has some, parsed by httpx-sse from the body
        (content-decoded by httpx), no line of which may be longer than :data:`MAX_LINE_BYTES`."""
        import httpx
        from httpx_sse import EventSource

        body = _bounded_lines(resp.iter_bytes(), MAX_LINE_BYTES, self._client.chat_url)
        for event in EventSource(httpx.Response(200, headers={"content-type": ctype}, content=body)).iter_sse():
            if event.data:  # comments, and events with only event:/id:/retry: fields, carry nothing
                yield event.data


def _bounded_lines(chunks: Iterable[bytes], limit: int, url: str) -> Iterator[bytes]:
    """``chunks`` passed on unchanged; a line (up to CR or LF) longer than ``limit`` bytes raises."""
    run = 0  # bytes since the last line break, carried over from earlier chunks
    for chunk in chunks:
        lengths = [len(part) for part in chunk.replace(b"\r", b"\n").split(b"\n")]
        lengths[0] += run
        run = lengths[-1]
        if max(lengths) > limit:
            raise CaptureError(f"malformed stream from {url}: a line longer than {limit >> 20} MiB")
        yield chunk
