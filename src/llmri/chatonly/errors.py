"""Failures talking to an OpenAI-compatible server, as one-line :class:`~llmri.CaptureError` messages
(never with headers, so never with the API key)."""

from __future__ import annotations

import functools
import json
import socket
from typing import Any

from .._errors import CaptureError, one_line


class NoModelList(CaptureError):
    """The server has no OpenAI model list (``GET /models`` answered 404, or not a list)."""


@functools.cache
def _transport_errors() -> dict[type[BaseException], str]:
    """One line per httpx error type (``{url}``, ``{after}``, ``{wait}``, ``{cause}``, ``{detail}`` and
    ``{kind}`` filled in); the most specific class an error is an instance of picks its line, as in
    httpx's ``HTTPCORE_EXC_MAP``."""
    import httpx
    from httpx_sse import SSEError

    return {
        httpx.ConnectTimeout: "connecting to {url} timed out{after} (is the server running and reachable?)",
        httpx.ConnectError: "cannot reach the OpenAI-compatible server at {url}: {cause} (is it running?)",
        httpx.ReadTimeout: "{url} sent nothing for {wait} (timeout; raise timeout= or --timeout)",
        httpx.TimeoutException: "timed out talking to {url}{after}",
        httpx.RemoteProtocolError: "{url} closed the connection mid-answer ({detail})",
        httpx.ReadError: "lost the connection to {url} ({detail})",
        httpx.WriteError: "lost the connection to {url} ({detail})",
        SSEError: "malformed stream from {url}: {detail}",
        Exception: "request to {url} failed: {kind}: {detail}",
    }


#: Why a connection could not be made, by the type of the OS error beneath httpx's ConnectError.
_CONNECT_CAUSES: dict[type[BaseException], str] = {
    ConnectionRefusedError: "connection refused",
    socket.gaierror: "unknown host name",
}


def _most_specific(exc: BaseException, table: dict[type[BaseException], str]) -> str | None:
    return next((table[cls] for cls in type(exc).__mro__ if cls in table), None)


def _cause(exc: BaseException) -> str:
    """What lies beneath a connect error: the first OS error in its chain of causes, by type."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return _most_specific(seen, _CONNECT_CAUSES) or one_line(seen, 120)
        seen = seen.__cause__ or seen.__context__
    return one_line(exc, 120)


def network_error(exc: Exception, url: str, timeout: float | None) -> CaptureError:
    """One line for an httpx transport error (never includes headers, so never the key)."""
    line = _most_specific(exc, _transport_errors()) or "{kind}"
    return CaptureError(
        line.format(
            url=url,
            after=f" after {timeout:g} s" if timeout else "",
            wait=f"{timeout:g} s" if timeout else "too long",
            cause=_cause(exc),
            detail=one_line(exc, 120),
            kind=type(exc).__name__,
        )
    )


def error_message(body: bytes) -> str:
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


def http_error(
    status: int, reason: str, body: bytes, url: str, model: str | None, *, error: type[CaptureError] = CaptureError
) -> CaptureError:
    """One line for an HTTP error answer, with a hint for the usual causes (key, URL, model name)."""
    msg = error_message(body)
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
    return error(line + hint)
