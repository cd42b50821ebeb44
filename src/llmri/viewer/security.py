"""Local-first does not mean open to every web page: Host allow-list, WebSocket Origin check, launch token.

Threats handled here:

* DNS rebinding: a foreign page resolves its own name to 127.0.0.1 and reads the viewer. Every
  HTTP request and WebSocket upgrade must carry a ``Host`` that names a loopback address or
  ``localhost`` with the port the server listens on, otherwise it gets 403.
* Cross-site WebSocket hijacking: browsers do not apply CORS to WebSocket upgrades (and
  Starlette's CORS middleware does not guard them), so an upgrade whose ``Origin`` is missing,
  ``null`` or not this server is refused *before* ``accept``.
* Exposure on a network: binding a non-loopback address needs an explicit flag and then a random
  per-launch token on every request (query ``?token=``, header ``X-Llmri-Token`` or the
  ``llmri_token`` cookie that the first tokened page load sets, ``SameSite=Strict``).
* Path traversal: the client never sends a path; stores and sessions are addressed by ids that
  :func:`valid_id` accepts (letters, digits, ``-``, ``_``) and that must name a known store/session.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .._errors import LlmriError

TOKEN_COOKIE = "llmri_token"
TOKEN_HEADER = "x-llmri-token"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class ViewerError(LlmriError):
    """The viewer could not start (bad bind address, port in use, missing flag)."""


def valid_id(value: str) -> bool:
    """True for ids a client may send (store and session ids): no dots, slashes, backslashes, NUL."""
    return isinstance(value, str) and bool(_ID_RE.match(value))


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``); brackets allowed."""
    h = host.strip().lower().strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None]:
    """``"127.0.0.1:8000"`` -> ``("127.0.0.1", 8000)``, ``"[::1]"`` -> ``("::1", None)``; bad -> ``("", None)``."""
    value = value.strip()
    if not value or any(c in value for c in "/\\@ \t\x00"):
        return "", None
    try:
        parts = urlsplit("//" + value)
        return (parts.hostname or ""), parts.port
    except ValueError:
        return "", None


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class SecurityPolicy:
    """What the server accepts. ``port`` is the port it listens on (``None``: not known yet, any port).

    ``remote`` (a non-loopback bind allowed by the user's flag) lifts the Host allow-list, since the
    server cannot know every name it is reached by, and requires ``token`` on every request instead.
    """

    port: int | None = None
    token: str | None = None
    remote: bool = False
    extra_hosts: set[str] = field(default_factory=set)

    def host_ok(self, host_header: str) -> bool:
        host, port = split_host(host_header)
        if not host:
            return False
        if self.remote:
            return True
        if not (is_loopback(host) or host.lower() in self.extra_hosts):
            return False
        if self.port is None:
            return True
        return (port if port is not None else 80) == self.port

    def origin_ok(self, origin: str | None, host_header: str) -> bool:
        """A WebSocket upgrade's Origin must be this very server (scheme http, same host and port)."""
        if not origin or origin.strip().lower() == "null":
            return False
        try:
            parts = urlsplit(origin.strip())
            oport = parts.port
        except ValueError:
            return False
        # The server speaks plain http; https is only plausible behind a TLS proxy of a remote bind.
        if not parts.hostname or parts.scheme not in (("http", "https") if self.remote else ("http",)):
            return False
        if oport is None:
            oport = 443 if parts.scheme == "https" else 80
        host, hport = split_host(host_header)
        if hport is None:
            hport = 80
        return parts.hostname.lower() == host.lower() and oport == hport and self.host_ok(host_header)

    def token_ok(self, query: str, headers: dict[str, str]) -> tuple[bool, bool]:
        """``(ok, from_query)``: whether the request carries the launch token, and whether in its URL."""
        if self.token is None:
            return True, False
        q = parse_qs(query).get("token", [])
        if q and secrets.compare_digest(q[0].encode(), self.token.encode()):
            return True, True
        h = headers.get(TOKEN_HEADER, "")
        if h and secrets.compare_digest(h.encode(), self.token.encode()):
            return True, False
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no token
            return False, False
        c = cookie.get(TOKEN_COOKIE)
        if c is not None and secrets.compare_digest(c.value.encode(), self.token.encode()):
            return True, False
        return False, False


class SecurityMiddleware:
    """Pure ASGI middleware applying a :class:`SecurityPolicy` to HTTP requests and WebSocket upgrades."""

    def __init__(self, app: Any, policy: SecurityPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        problem, status = "", 0
        if not self.policy.host_ok(host):
            problem, status = f"refused: Host {host!r} is not this viewer (DNS rebinding guard)", 403
        elif kind == "websocket" and not self.policy.origin_ok(headers.get("origin"), host):
            problem, status = f"refused: WebSocket Origin {headers.get('origin')!r} is not this viewer", 403
        ok, from_query = self.policy.token_ok(scope.get("query_string", b"").decode("latin-1"), headers)
        if not problem and not ok:
            problem, status = "refused: this viewer needs the token printed in its URL", 401
        if problem:
            if kind == "websocket":
                # Closing before accept makes the server answer the upgrade with HTTP 403.
                await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
                return
            from starlette.responses import JSONResponse

            await JSONResponse({"error": problem}, status_code=status)(scope, receive, send)
            return
        if kind == "http" and from_query and self.policy.token:
            token = self.policy.token

            async def send_with_cookie(message: dict) -> None:
                if message["type"] == "http.response.start":
                    cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
                    message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
                await send(message)

            await self.app(scope, receive, send_with_cookie)
            return
        await self.app(scope, receive, send)
