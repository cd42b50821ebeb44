"""Chat-only mode: stream a chat answer from any OpenAI-compatible server and record it as frames.

Ollama, LM Studio, llama.cpp's server and vLLM all speak ``POST {base}/chat/completions`` with
``stream: true``. llmri asks for ``logprobs: true, top_logprobs: 5`` and turns the streamed answer
into :class:`~llmri.frame.Frame` objects with no activations (``tiles``, ``norms`` and ``sparsity``
are empty dicts), so the viewer's timeline, token strip and probability panels still work.

What a chat-only session holds
------------------------------
Prompt rows (role ``"prompt"``)
    One row per message of the conversation, text ``"{role}: {content}\\n"``, then one row
    ``"assistant: "`` that stands for the generation prompt (the place where the chat template
    hands over to the model). The server tokenizes with a template llmri cannot see, so the
    prompt has no per-token rows and no statistics: ``id`` is -1, ``logprob``/``entropy`` NaN, no
    alternatives. ``session.prompt_text + session.text`` reads as a transcript.
Generated rows (role ``"generated"``)
    One row per token the server reports in ``logprobs.content``. ``text`` is the text the token
    adds to the answer (the text of all generated rows joined is exactly the streamed answer; a
    token that is only part of a UTF-8 character carries ``""`` and the token completing it carries
    the character). ``logprob`` is the server's log-probability (nats) of the chosen token;
    ``top_probs``/``top_texts`` the top-5 alternatives, most likely first, as probabilities;
    ``entropy`` an *estimate* (see :func:`entropy_lower_bound`). Where the server returns no
    logprobs, each streamed text chunk becomes one row with ``id`` -1 and NaN statistics.
Token ids
    Servers report token strings, not vocabulary ids. ``id`` and ``top_ids`` are session-local:
    the index of the token string in ``meta["vocab"]`` (numbered by first appearance), so the same
    string has the same id within one session; they are not the model's vocabulary ids.

``meta`` carries ``chat_only: True``, ``signals: []``, ``layers: []``, ``tile: [0, 0]``,
``backend: "openai"``, ``model: {"name", "url"}`` (the base URL without credentials, query or
fragment), ``messages``, ``generation`` (the settings), ``logprobs`` (whether the server returned
any), ``finish_reason``, ``stop_reason``, ``vocab`` and, after a failure, ``error``. The API key is
sent upstream as ``Authorization: Bearer`` only: it is never put in ``meta``, a ``repr`` or an
error message.

Errors (refused connection, HTTP errors such as a 404 for an unknown model, timeouts, a malformed
stream) raise :class:`~llmri.CaptureError` with one line; a session being recorded is closed as
``interrupted`` with the frames received so far.
"""

from __future__ import annotations

import json
import math
import queue
import socket
import threading
import urllib.parse
from collections.abc import Generator, Iterator, Sequence
from typing import Any

from ._errors import CaptureError, one_line, require
from .frame import TOP_K, Frame, Token
from .framestream import FrameStream
from .messages import check_messages
from .session import Session

#: Seconds to wait for a connection and for each next piece of the stream (not the whole answer).
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_NEW_TOKENS = 256
#: A stream line longer than this is treated as malformed (a server must not make us buffer without bound).
MAX_LINE_BYTES = 1 << 20
#: Largest non-streamed body read (error bodies, a server that ignores ``stream: true``).
MAX_BODY_BYTES = 16 << 20
_QUEUE_SIZE = 64

ENTROPY_ESTIMATE = (
    "lower bound from the server's top logprobs: the known probabilities (top-k, plus the chosen "
    "token when it is not among them) and the remaining mass as one bucket"
)


def entropy_lower_bound(logprobs: Sequence[float]) -> float:
    """Estimate the entropy (nats) of a next-token distribution from a few of its log-probabilities.

    ``logprobs`` are the log-probabilities the server reported (the top-k alternatives, plus the
    chosen token when it is not among them), each for a distinct token. With known probabilities
    ``q_i`` and remainder ``r = 1 - sum(q_i)``, the estimate is ``-sum(q_i ln q_i) - r ln r``: the
    entropy of the distribution with all the unreported tokens merged into one outcome. Merging
    outcomes never raises entropy, so this is a lower bound of the true entropy; it is exact when
    the remainder is a single token, and falls short by at most ``r ln(V - k)`` for a vocabulary of
    ``V`` tokens. When the reported probabilities sum to more than 1 (rounding, or a server that
    reports something else), they are renormalised and ``r`` is 0. Returns NaN when no finite
    log-probability is given.
    """
    qs = [math.exp(lp) for lp in logprobs if lp is not None and not math.isnan(lp) and lp <= 1e-6]
    qs = [min(q, 1.0) for q in qs]
    if not qs:
        return math.nan
    total = sum(qs)
    if total > 1.0:
        qs = [q / total for q in qs]
        rest = 0.0
    else:
        rest = 1.0 - total

    def h(p: float) -> float:
        return -p * math.log(p) if p > 0 else 0.0

    return max(0.0, sum(h(q) for q in qs) + h(rest))


# -- URLs ---------------------------------------------------------------------------------------


def _split_url(url: Any) -> tuple[str, str]:
    """``(request_base, display_base)``: the base to send requests to (credentials and query kept)
    and the one shown in meta and messages (no credentials, query or fragment). Both without a
    trailing ``/`` or ``/chat/completions``."""
    bad = CaptureError(
        "the OpenAI-compatible URL must be an http(s) base URL such as http://127.0.0.1:11434/v1 "
        "(Ollama) or http://127.0.0.1:1234/v1 (LM Studio)"
    )
    if not isinstance(url, str) or not url.strip():
        raise bad
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host = parts.hostname
        port = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise bad from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise bad
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    request = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    shown_host = f"[{host}]" if ":" in host else host
    netloc = f"{shown_host}:{port}" if port is not None else shown_host
    display = urllib.parse.urlunsplit((parts.scheme.lower(), netloc, path, "", ""))
    return request, display


def _join(base: str, tail: str) -> str:
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path + tail, parts.query, ""))


# -- messages -----------------------------------------------------------------------------------


def _messages(prompt: Any) -> list[dict[str, str]]:
    """A string becomes one user message; a list is checked by :func:`~llmri.messages.check_messages`."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return check_messages(prompt)


# -- errors -------------------------------------------------------------------------------------


def _network_error(exc: Exception, url: str, timeout: float | None) -> CaptureError:
    """One line for an httpx transport error (never includes headers, so never the key)."""
    import httpx

    after = f" after {timeout:g} s" if timeout else ""
    if isinstance(exc, httpx.ConnectTimeout):
        return CaptureError(f"connecting to {url} timed out{after} (is the server running and reachable?)")
    if isinstance(exc, httpx.ConnectError):
        reason = str(exc).lower()
        what = "connection refused" if "refused" in reason else one_line(str(exc), 120) or "cannot connect"
        return CaptureError(f"cannot reach the OpenAI-compatible server at {url}: {what} (is it running?)")
    if isinstance(exc, httpx.ReadTimeout):
        wait = f"{timeout:g} s" if timeout else "too long"
        return CaptureError(f"{url} sent nothing for {wait} (timeout; raise timeout= or --timeout)")
    if isinstance(exc, httpx.TimeoutException):
        return CaptureError(f"timed out talking to {url}{after}")
    if isinstance(exc, httpx.RemoteProtocolError):
        return CaptureError(f"{url} closed the connection mid-answer ({one_line(str(exc), 120)})")
    if isinstance(exc, (httpx.ReadError, httpx.WriteError)):
        return CaptureError(f"lost the connection to {url} ({one_line(str(exc), 120) or type(exc).__name__})")
    return CaptureError(f"request to {url} failed: {type(exc).__name__}: {one_line(str(exc), 160)}")


def _error_message(body: bytes) -> str:
    """The human part of an error body: OpenAI ``{"error": {"message"}}``, ``{"error": str}``,
    FastAPI ``{"detail"}``, or the first line of plain text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return one_line(text.splitlines()[0] if text else "", 200)
    msg: Any = data
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        msg = err.get("message", err) if isinstance(err, dict) else err
    if isinstance(msg, str):
        return one_line(msg.splitlines()[0] if msg.strip() else "", 200)
    return one_line(json.dumps(msg), 200)


def _http_error(status: int, reason: str, body: bytes, url: str, model: str | None) -> CaptureError:
    msg = _error_message(body)
    line = f"{url} answered HTTP {status} {reason}".rstrip()
    if msg and msg.lower() != reason.lower():
        line += f": {msg}"
    hint = ""
    if status in (401, 403):
        hint = " (check the API key: --api-key-env / api_key=)"
    elif status == 404 and model and "model" in msg.lower():
        hint = f" (is the model name {model!r} right? the server's /models lists what it has)"
    elif status == 404:
        hint = " (is the URL the API base, such as http://127.0.0.1:11434/v1, and is the model name right?)"
    return CaptureError(line + hint)


# -- the client ---------------------------------------------------------------------------------


class ChatOnlyClient:
    """A connection to one OpenAI-compatible server, fixed at construction.

    Parameters
    ----------
    url:
        The API base URL, e.g. ``http://127.0.0.1:11434/v1`` (Ollama), ``http://127.0.0.1:1234/v1``
        (LM Studio), ``http://127.0.0.1:8080/v1`` (llama.cpp's server). A trailing
        ``/chat/completions`` is accepted and dropped. :attr:`url` is this base without
        credentials, query or fragment (what meta and messages show).
    model:
        The model name to request. ``None`` asks the server's ``/models``: its only model is used;
        several raise :class:`~llmri.CaptureError` listing them; a server without ``/models`` gets
        requests without a ``model`` field.
    api_key:
        Sent as ``Authorization: Bearer <key>`` to this server only; never stored in meta, shown in
        a ``repr`` or an error, and redirects are not followed.
    timeout:
        Seconds to wait to connect and for each next piece of the stream (``None``: forever).

    The client holds an HTTP connection pool: ``close()`` it (or use ``with``). It is safe to use
    from several threads; the viewer builds one at launch and calls :meth:`stream` per turn.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        httpx = require("httpx", "openai")
        self._base, self.url = _split_url(url)
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise CaptureError(f"model must be a non-empty name, got {model!r}")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise CaptureError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if api_key is not None and not isinstance(api_key, str):
            raise CaptureError("api_key must be a string")
        self.model: str | None = model
        self.timeout = float(timeout) if timeout is not None else None
        headers = {"Accept": "text/event-stream, application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(timeout=self.timeout, headers=headers, follow_redirects=False)
        self._lock = threading.Lock()
        self._resolved = model is not None

    def __repr__(self) -> str:
        return f"ChatOnlyClient({self.url!r}, model={self.model!r})"

    @property
    def chat_url(self) -> str:
        """The endpoint requests go to (without credentials or query)."""
        return self.url + "/chat/completions"

    def models(self) -> list[str]:
        """The model ids the server's ``GET /models`` lists; raises CaptureError on any failure."""
        import httpx

        try:
            resp = self._http.get(_join(self._base, "/models"))
        except httpx.HTTPError as exc:
            raise _network_error(exc, self.url, self.timeout) from None
        if resp.status_code >= 400:
            raise _http_error(resp.status_code, resp.reason_phrase, resp.content[:4096], self.url + "/models", None)
        try:
            data = resp.json()
            return [str(m["id"]) for m in data["data"]]
        except (ValueError, KeyError, TypeError):
            raise CaptureError(f"{self.url}/models did not answer an OpenAI model list") from None

    def resolve_model(self) -> str | None:
        """The model name requests use (see ``model`` above); asks the server once."""
        with self._lock:
            if self._resolved:
                return self.model
        try:
            names = self.models()
        except CaptureError as exc:
            if "HTTP 404" not in str(exc) and "model list" not in str(exc):
                raise
            names = []
        if len(names) > 1:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise CaptureError(
                f"{self.url} serves {len(names)} models ({shown}): choose one with --openai-model / model="
            )
        with self._lock:
            self.model = names[0] if names else None
            self._resolved = True
            return self.model

    def stream(self, messages: Any, **kw: Any) -> ChatOnlyStream:
        """Start one answer to ``messages``: see :class:`ChatOnlyStream` for the keywords."""
        return ChatOnlyStream(self, messages, **kw)

    def chat(self, messages: Any, **kw: Any) -> Session:
        """Answer ``messages`` and return the whole :class:`~llmri.session.Session`."""
        return Session.collect(ChatOnlyStream(self, messages, **kw))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatOnlyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the stream ---------------------------------------------------------------------------------


class ChatOnlyStream(FrameStream):
    """An iterable of :class:`~llmri.frame.Frame`, one per row (prompt rows first, see the module doc).

    Built by :meth:`ChatOnlyClient.stream` or :func:`chat_only_stream`. The constructor validates
    the messages and settings and, with ``store``, creates the session (``session_id``) but does
    not touch the network: iterating does. The prompt rows come at once; then the request is sent
    from a worker thread, and each generated row is yielded as its chunk arrives. ``stop()``
    (thread-safe) ends the answer at once, keeping what was yielded: the connection is closed, which
    tells the server to stop generating, and the session is ``complete`` with ``stop_reason``
    ``"stopped"``. ``close()`` does the same from outside an iteration. A failure raises
    :class:`~llmri.CaptureError` (one line) and closes the session as ``interrupted``.

    Keywords: ``max_new_tokens`` (OpenAI ``max_tokens``), ``temperature`` (0 asks for greedy),
    ``top_p``, ``seed``, ``stop`` (strings), ``logprobs`` (ask for them; on by default, and
    dropped with one retry if the server rejects them), ``store`` (path/URL/FrameStore),
    ``meta`` (extra keys for the session metadata). See :class:`~llmri.framestream.FrameStream`
    for the lifecycle.
    """

    what = "chat stream"

    def __init__(
        self,
        client: ChatOnlyClient,
        messages: Any,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        stop: Sequence[str] | str | None = None,
        logprobs: bool = True,
        store: Any = None,
        meta: dict[str, Any] | None = None,
        _owns_client: bool = False,
    ) -> None:
        self._client = client
        self._owns_client = _owns_client
        try:
            self.messages = _messages(messages)
            super().__init__(self.make_settings(max_new_tokens, temperature, top_p, seed, stop))
            self.meta = self.base_meta(
                model={"name": client.model, "url": client.url},
                backend="openai",
                prompt=messages,
                messages=self.messages,
                chat_only=True,
            )
            self.meta.update(
                entropy_estimate=ENTROPY_ESTIMATE,
                token_ids="session-local: index into meta['vocab']",
                logprobs=None,
            )
            self.attach(store, meta)
        except BaseException:
            self._close_client()
            raise
        self._seed = seed
        self._logprobs = bool(logprobs)
        self.finish_reason: str | None = None
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=_QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._resp: Any = None
        self._resp_lock = threading.Lock()
        self._vocab: dict[str, int] = {}
        self._index = 0
        self._saw_logprobs = False
        self._reasoning: list[str] = []

    # -- control ---------------------------------------------------------------------------
    def stop(self) -> None:
        """End the answer at once (thread-safe); rows already yielded are kept."""
        self._stop_event.set()
        self._abort_connection()

    def _close_client(self) -> None:
        if self._owns_client:
            self._client.close()

    def _abort_connection(self) -> None:
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

    # -- the worker thread: HTTP and SSE parsing -------------------------------------------
    def _put(self, item: tuple[str, Any]) -> bool:
        """Queue an event; bounded, so a consumer that stops reading stalls the upstream read."""
        while not self._stop_event.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _payload(self, model: str | None, logprobs: bool) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {
            "messages": self.messages,
            "stream": True,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if model:
            body["model"] = model
        if self._seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = s.stop
        if logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = TOP_K
        return body

    def _work(self) -> None:
        import httpx

        c = self._client
        try:
            model = c.resolve_model()
            self._put(("model", model))
            logprobs = self._logprobs
            for attempt in range(2):
                req = c._http.build_request(
                    "POST", _join(c._base, "/chat/completions"), json=self._payload(model, logprobs)
                )
                resp = c._http.send(req, stream=True)
                with self._resp_lock:
                    self._resp = resp
                if self._stop_event.is_set():
                    self._abort_connection()
                try:
                    if resp.status_code >= 400:
                        body = self._read_body(resp, 4096)
                        if attempt == 0 and logprobs and resp.status_code in (400, 422) and b"logprob" in body.lower():
                            logprobs = False  # a server that refuses logprobs still streams text
                            self._put(("no_logprobs", None))
                            continue
                        raise _http_error(resp.status_code, resp.reason_phrase, body, c.chat_url, model)
                    self._read_answer(resp)
                    return
                finally:
                    resp.close()
        except CaptureError as exc:
            if not self._stop_event.is_set():
                self._put(("error", exc))
        except httpx.HTTPError as exc:
            if not self._stop_event.is_set():
                self._put(("error", _network_error(exc, c.url, c.timeout)))
        except Exception as exc:  # noqa: BLE001 - the consumer must hear of any failure, in one line
            if not self._stop_event.is_set():
                self._put(
                    ("error", CaptureError(f"chat with {c.url} failed: {type(exc).__name__}: {one_line(str(exc))}"))
                )
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
            body = self._read_body(resp, MAX_BODY_BYTES)
            try:
                data = json.loads(body)
                choice = data["choices"][0]
                chunk = {
                    "choices": [
                        {
                            "delta": {"content": choice["message"].get("content") or ""},
                            "logprobs": choice.get("logprobs"),
                            "finish_reason": choice.get("finish_reason") or "stop",
                        }
                    ]
                }
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                raise CaptureError(f"malformed answer from {url}: not a chat completion") from None
            self._put(("chunk", chunk))
            self._put(("done", None))
            return
        if "event-stream" not in ctype:
            raise CaptureError(f"malformed stream from {url}: expected text/event-stream, got {ctype or 'no type'!r}")
        for data in self._sse(resp):
            if self._stop_event.is_set():
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

    def _sse(self, resp: Any) -> Iterator[str]:
        """The ``data`` of each server-sent event (lines joined by newlines), bounded line length."""
        buf = b""
        data: list[str] = []
        for piece in resp.iter_bytes():
            buf += piece
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line, buf = buf[:nl].rstrip(b"\r"), buf[nl + 1 :]
                if not line:
                    if data:
                        yield "\n".join(data)
                        data = []
                    continue
                if line.startswith(b"data:"):
                    value = line[5:]
                    data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace"))
                # other fields (event:, id:, retry:) and comments (":") carry nothing we use
            if len(buf) > MAX_LINE_BYTES:
                raise CaptureError(f"malformed stream from {self._client.chat_url}: a line longer than 1 MiB")
        line = buf.rstrip(b"\r")
        if line.startswith(b"data:"):
            value = line[5:]
            data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace"))
        if data:
            yield "\n".join(data)

    # -- the consumer: chunks to frames ------------------------------------------------------
    def _local_id(self, text: str) -> int:
        i = self._vocab.get(text)
        if i is None:
            i = self._vocab[text] = len(self._vocab)
        return i

    def _row(self, text: str, role: str, **kw: Any) -> Frame:
        token = Token(index=self._index, text=text, role=role, **kw)
        self._index += 1
        return Frame(token)

    def _prompt_rows(self) -> list[Frame]:
        rows = [self._row(f"{m['role']}: {m['content']}\n", "prompt", id=-1) for m in self.messages]
        rows.append(self._row("assistant: ", "prompt", id=-1))
        return rows

    def _token_row(self, entry: Any, text: str) -> Frame:
        url = self._client.chat_url
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            raise CaptureError(f"malformed stream from {url}: a logprobs entry without a token string")
        try:
            lp = float(entry.get("logprob", math.nan))
        except (TypeError, ValueError):
            raise CaptureError(f"malformed stream from {url}: a logprob is not a number") from None
        tops: list[tuple[float, str]] = []
        for alt in entry.get("top_logprobs") or []:
            try:
                alp = float(alt["logprob"])
                atok = str(alt["token"])
            except (KeyError, TypeError, ValueError):
                raise CaptureError(f"malformed stream from {url}: a top_logprobs entry without token/logprob") from None
            if not math.isnan(alp):
                tops.append((alp, atok))
        tops.sort(key=lambda t: -t[0])
        known = [alp for alp, _ in tops]
        if entry["token"] not in {t for _, t in tops} and not math.isnan(lp):
            known.append(lp)  # the chosen token's mass is known too, even outside the top-k
        tops = tops[:TOP_K]
        if tops or not math.isnan(lp):
            self._saw_logprobs = True
        return self._row(
            text,
            "generated",
            id=self._local_id(entry["token"]),
            logprob=lp,
            entropy=entropy_lower_bound(known),
            top_ids=tuple(self._local_id(t) for _, t in tops),
            top_probs=tuple(min(1.0, math.exp(alp)) for alp, _ in tops),
            top_texts=tuple(t for _, t in tops),
        )

    def _chunk_rows(self, chunk: Any) -> list[Frame]:
        url = self._client.chat_url
        if not isinstance(chunk, dict):
            raise CaptureError(f"malformed stream from {url}: an event is not a JSON object")
        if chunk.get("error") is not None:
            msg = _error_message(json.dumps({"error": chunk["error"]}).encode())
            raise CaptureError(f"{url} reported an error mid-answer: {msg or 'no message'}")
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise CaptureError(f"malformed stream from {url}: a chunk without a 'choices' list")
        rows: list[Frame] = []
        for choice in choices[:1]:  # n = 1: one answer
            if not isinstance(choice, dict):
                raise CaptureError(f"malformed stream from {url}: a choice is not an object")
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise CaptureError(f"malformed stream from {url}: 'delta' is not an object")
            content = delta.get("content") or ""
            if not isinstance(content, str):
                raise CaptureError(f"malformed stream from {url}: 'content' is not a string")
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thinking, str):
                self._reasoning.append(thinking)
            lp = choice.get("logprobs")
            entries = lp.get("content") if isinstance(lp, dict) else None
            if entries:
                if not isinstance(entries, list):
                    raise CaptureError(f"malformed stream from {url}: logprobs.content is not a list")
                # Each token takes its own string when that is the next piece of the streamed text;
                # the last takes what is left (so the rows always join to the exact answer).
                rest = content
                for j, entry in enumerate(entries):
                    tok = entry.get("token") if isinstance(entry, dict) else None
                    if j == len(entries) - 1:
                        piece = rest
                    elif isinstance(tok, str) and tok and rest.startswith(tok):
                        piece = tok
                    else:
                        piece = ""
                    rest = rest[len(piece) :]
                    rows.append(self._token_row(entry, piece))
            elif content:
                rows.append(self._row(content, "generated", id=-1))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return rows

    def _next_event(self) -> tuple[str, Any] | None:
        while not self._stop_event.is_set():
            try:
                return self._q.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

    def _produce(self) -> Generator[Frame, None, None]:
        yield from self._prompt_rows()
        if not self._stop_event.is_set():
            self._thread = threading.Thread(target=self._work, name="llmri-chat-only", daemon=True)
            self._thread.start()
        done = False
        while True:
            event = self._next_event()
            if event is None:
                self.stop_reason = "stopped"
                break
            kind, value = event
            if kind == "model":
                self.meta["model"] = {"name": value, "url": self._client.url}
                if self.writer is not None:
                    self.writer.update_meta(model=self.meta["model"])
            elif kind == "no_logprobs":
                self.meta["logprobs_rejected"] = True
            elif kind == "chunk":
                yield from self._chunk_rows(value)
            elif kind == "done":
                done = True
            elif kind == "error":
                raise value
            elif kind == "eof" and not done and self.finish_reason is None:
                raise CaptureError(
                    f"the stream from {self._client.chat_url} ended before the answer did "
                    "(no finish_reason and no [DONE])"
                )
            elif kind == "end":
                break
        if not self.stop_reason:
            self.stop_reason = {"length": "max_new_tokens", "stop": "eos"}.get(self.finish_reason or "", "eos")

    def _release(self) -> None:
        self._stop_event.set()
        self._abort_connection()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._close_client()

    def _final_meta(self) -> dict[str, Any]:
        end: dict[str, Any] = {
            "stop_reason": self.stop_reason,
            "finish_reason": self.finish_reason,
            "logprobs": self._saw_logprobs,
            "vocab": list(self._vocab),
        }
        if self._reasoning:
            end["reasoning"] = "".join(self._reasoning)
        if self.error is not None:
            end["error"] = self.error
        return end


def chat_only_stream(
    url: str,
    messages: Any,
    *,
    model: str | None = None,
    api_key: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    **kw: Any,
) -> ChatOnlyStream:
    """Stream an answer from the OpenAI-compatible server at ``url``, frame by frame.

    ``messages``: a string (one user message) or a list of ``{"role", "content"}`` dicts.
    ``model``, ``api_key``, ``timeout``: see :class:`ChatOnlyClient`. Other keywords
    (``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, ``logprobs``, ``store``,
    ``meta``): see :class:`ChatOnlyStream`. The stream owns its client and closes it when done.
    """
    client = ChatOnlyClient(url, model=model, api_key=api_key, timeout=timeout)
    return ChatOnlyStream(client, messages, _owns_client=True, **kw)


def chat_only(
    url: str,
    messages: Any,
    *,
    model: str | None = None,
    api_key: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = 0,
    stop: Sequence[str] | str | None = None,
    store: Any = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    meta: dict[str, Any] | None = None,
) -> Session:
    """Chat with an OpenAI-compatible server and return the answer as a chat-only
    :class:`~llmri.session.Session` (no activations; see the module doc for its rows and meta).

    Example: ``llmri.chat_only("http://127.0.0.1:11434/v1", "Why is the sky blue?", model="llama3.2")``.
    With ``store`` (path/URL/FrameStore) the session is also recorded there as it streams.
    Raises :class:`~llmri.CaptureError` (one line) when the server cannot be reached, answers an
    HTTP error, times out, or sends a malformed stream.
    """
    st = chat_only_stream(
        url,
        messages,
        model=model,
        api_key=api_key,
        timeout=timeout,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=stop,
        store=store,
        meta=meta,
    )
    return Session.collect(st)
