"""Failures talking to an OpenAI-compatible server, as one-line :class:`~llmri.CaptureError` messages
(never with headers, so never with the API key)."""

from __future__ import annotations

import json
from typing import Any

from ..._errors import CaptureError, one_line


def network_error(exc: Exception, url: str, timeout: float | None) -> CaptureError:
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


def http_error(status: int, reason: str, body: bytes, url: str, model: str | None) -> CaptureError:
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
    return CaptureError(line + hint)
