"""The connection to one OpenAI-compatible server: its URL, model name, API key and HTTP client."""

from __future__ import annotations

import threading
import urllib.parse
from typing import Any

from .._errors import CaptureError, require
from ..store import Session
from .chat import ChatOnlyStream
from .errors import NoModelList, http_error, network_error

#: Seconds to wait for a connection and for each next piece of the stream (not the whole answer).
DEFAULT_TIMEOUT = 60.0


def split_url(url: Any) -> tuple[str, str]:
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


def join_url(base: str, tail: str) -> str:
    """``base`` (credentials and query kept) with ``tail`` added to its path."""
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path + tail, parts.query, ""))


class ChatOnlyClient:
    """A connection to one OpenAI-compatible server, fixed at construction.

    Parameters
    ----------
    url:
        The API base URL, e.g. ``http://127.0.0.1:11434/v1`` (Ollama), ``http://127.0.0.1:1234/v1``
        (LM Studio), ``http://127.0.0.1:8080/v1`` (llama.cpp's server). A trailing
        ``/chat/completions`` is accepted and dropped. ``url`` is this base without
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

    Notes
    -----
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
        require("httpx_sse", "openai")  # reads the event stream; missing, fail now rather than mid-answer
        self._base, self.url = split_url(url)
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
        """The model ids the server's ``GET /models`` lists; raises CaptureError on any failure
        (:class:`~llmri.chatonly.errors.NoModelList` when the server has no such list)."""
        import httpx

        url = self.url + "/models"
        try:
            resp = self._http.get(join_url(self._base, "/models"))
        except httpx.HTTPError as exc:
            raise network_error(exc, self.url, self.timeout) from None
        if resp.status_code == 404:
            raise http_error(404, resp.reason_phrase, resp.content[:4096], url, None, error=NoModelList)
        if resp.status_code >= 400:
            raise http_error(resp.status_code, resp.reason_phrase, resp.content[:4096], url, None)
        try:
            data = resp.json()
            return [str(m["id"]) for m in data["data"]]
        except (ValueError, KeyError, TypeError):
            raise NoModelList(f"{self.url}/models did not answer an OpenAI model list") from None

    def resolve_model(self) -> str | None:
        """The model name requests use (see ``model`` above); asks the server once."""
        with self._lock:
            if self._resolved:
                return self.model
        try:
            names = self.models()
        except NoModelList:
            names = []  # a server without /models takes requests without a model name
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
        """Answer ``messages`` and return the whole :class:`~llmri.Session`."""
        return Session.collect(self.stream(messages, **kw))

    def post_chat(self, body: dict[str, Any]) -> Any:
        """Send ``body`` to the chat endpoint; returns the ``httpx.Response`` with its headers read and
        its body still to stream (close it). Raises httpx's errors (see :func:`.errors.network_error`)."""
        req = self._http.build_request("POST", join_url(self._base, "/chat/completions"), json=body)
        return self._http.send(req, stream=True)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> ChatOnlyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
