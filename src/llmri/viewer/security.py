"""Local-first does not mean open to every web page: Host allow-list, Origin checks, launch token.

Threats handled here:

* DNS rebinding: a foreign page resolves its own name to 127.0.0.1 and reads the viewer. Every
  HTTP request and WebSocket upgrade must carry a ``Host`` that names a loopback address or
  ``localhost`` with the port the server listens on, otherwise it gets 403.
* Lax parsing of those headers: ``Host`` must be exactly ``name`` or ``name:port`` (a DNS name, a
  canonical IPv4 address or a bracketed IPv6 address; port 1-65535 in decimal without leading
  zeros) and ``Origin`` exactly ``scheme://host[:port]``: no userinfo, path, query, fragment,
  spaces or a second copy of the header (:func:`parse_host`, :func:`parse_origin`). A port left
  out means the default port of the scheme, for Host as for Origin (a TLS proxy that forwards
  ``Host: h`` serves ``Origin: https://h``).
* Cross-site WebSocket hijacking: browsers do not apply CORS to WebSocket upgrades (and
  Starlette's CORS middleware does not guard them), so an upgrade whose ``Origin`` is missing,
  ``null`` or not this server is refused *before* ``accept``.
* Cross-site HTTP requests (a foreign page that embeds, links to or fetches the viewer): a request
  whose ``Sec-Fetch-Site`` is ``cross-site`` (or ``same-site``, which a page on another port of
  localhost is, unless its ``Origin`` proves it is this server), or whose ``Origin`` is present and
  not this server, gets 403. Address-bar navigation (``none``), the page's own requests
  (``same-origin``) and clients that send neither header (curl, scripts) are served. Every HTTP
  response of the app also says ``Cross-Origin-Resource-Policy: same-origin`` and
  ``Cross-Origin-Opener-Policy: same-origin``.
* Exposure on a network: binding a non-loopback address needs an explicit flag and then a random
  per-launch token on every request (query ``?token=``, header ``X-Llmri-Token`` or the cookie
  that the first tokened page load sets, ``HttpOnly; SameSite=Strict``). The cookie is named after
  the port (``llmri_token_8000``), since cookies ignore ports and two viewers on one host would
  otherwise overwrite each other's; the page then drops the token from its address bar.
* Path traversal: the client never sends a path; stores and sessions are addressed by ids that
  :func:`valid_id` accepts (letters, digits, ``-``, ``_``) and that must name a known store/session.
* Leaks (in ``app.py`` and ``serve.py``): errors answer one generic line (details go to the server's
  log), store labels are what the user typed, and the server does not name itself (no ``Server``).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from .._errors import LlmriError

#: The token cookie's name, followed by ``_PORT`` once the port is known (see :attr:`SecurityPolicy.cookie_name`).
TOKEN_COOKIE = "llmri_token"
TOKEN_HEADER = "x-llmri-token"
DEFAULT_PORTS = {"http": 80, "https": 443}
#: Headers every HTTP response carries (HTML pages also get :data:`CSP` and ``X-Frame-Options``).
RESPONSE_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# Host grammar (RFC 3986 / 7230, minus what no browser sends): name, canonical IPv4 or [IPv6], then :port.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME_RE = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_HOST_RE = re.compile(r"(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>[1-9][0-9]{0,4}))?")
_NUMERIC_LABEL_RE = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")  # WHATWG: such a last label makes the host IPv4
_ORIGIN_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<authority>[^/?#@\\\s]+)")
#: ``Sec-Fetch-Site`` values served without further proof.
_FETCH_SITES_OK = ("same-origin", "none")


class ViewerError(LlmriError):
    """The viewer could not start (bad bind address, port in use, missing flag)."""


def valid_id(value: str) -> bool:
    """True for ids a client may send (store and session ids): no dots, slashes, backslashes, NUL."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``); brackets allowed."""
    h = host.strip().lower().strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def parse_host(value: str) -> tuple[str, int | None] | None:
    """A ``Host`` header as ``(host, port)`` (host lowercased, IPv6 without brackets), or None if not exact.

    ``"127.0.0.1:8000"`` -> ``("127.0.0.1", 8000)``, ``"[::1]"`` -> ``("::1", None)``;
    ``"127.0.0.1:8000#x"``, ``"h:08000"``, ``"h:0"``, ``"a@h"``, ``"h "``, ``"127.1"`` -> None.
    """
    m = _HOST_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        return None
    name, port_text = m["name"], m["port"]
    port = int(port_text) if port_text is not None else None
    if port is not None and port > 65535:
        return None
    if name.startswith("["):
        try:
            return ipaddress.IPv6Address(name[1:-1]).compressed, port
        except ValueError:  # also refuses zone ids ("%eth0"), which browsers never send
            return None
    name = name.lower()
    if len(name) > 253:
        return None
    if _NUMERIC_LABEL_RE.fullmatch(name.rsplit(".", 1)[-1]):
        # Ends in a number: an IPv4 address, and only in the form browsers send (no "127.1", "0x7f.1", "010...").
        try:
            return (name, port) if str(ipaddress.IPv4Address(name)) == name else None
        except ValueError:
            return None
    return (name, port) if _NAME_RE.fullmatch(name) else None


def parse_origin(value: str) -> tuple[str, str, int | None] | None:
    """An ``Origin`` header as ``(scheme, host, port)``, or None unless exactly ``scheme://host[:port]``."""
    m = _ORIGIN_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        return None
    host = parse_host(m["authority"])
    return None if host is None else (m["scheme"], host[0], host[1])


def split_host(value: str) -> tuple[str, int | None]:
    """``"127.0.0.1:8000"`` -> ``("127.0.0.1", 8000)``, ``"[::1]"`` -> ``("::1", None)``; bad -> ``("", None)``."""
    return parse_host(value) or ("", None)


def new_token() -> str:
    return secrets.token_urlsafe(24)


def security_headers(content_type: str = "") -> list[tuple[str, str]]:
    """The headers a response of this content type carries (see :data:`RESPONSE_HEADERS`)."""
    out = list(RESPONSE_HEADERS.items())
    if content_type.startswith("text/html"):
        out += [("content-security-policy", CSP), ("x-frame-options", "DENY")]
    return out


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

    @property
    def cookie_name(self) -> str:
        """``llmri_token_PORT``: one cookie per viewer, since browsers send a host's cookies to all its ports."""
        return f"{TOKEN_COOKIE}_{self.port}" if self.port else TOKEN_COOKIE

    def host_ok(self, host_header: str) -> bool:
        parsed = parse_host(host_header)
        if parsed is None:
            return False
        if self.remote:
            return True
        host, port = parsed
        if not (is_loopback(host) or host in self.extra_hosts):
            return False
        if self.port is None:
            return True
        return (port if port is not None else DEFAULT_PORTS["http"]) == self.port

    def origin_ok(self, origin: str | None, host_header: str) -> bool:
        """``Origin`` names this very server: scheme http (https too behind a remote bind's TLS proxy),
        the host of ``Host`` and its port, a missing port on either side meaning the scheme's default."""
        parsed = parse_origin(origin) if origin else None
        host = parse_host(host_header)
        if parsed is None or host is None:
            return False
        scheme, ohost, oport = parsed
        # The server speaks plain http; https is only plausible behind a TLS proxy of a remote bind.
        if scheme not in (("http", "https") if self.remote else ("http",)):
            return False
        default = DEFAULT_PORTS[scheme]
        hhost, hport = host
        same_port = (oport if oport is not None else default) == (hport if hport is not None else default)
        return ohost == hhost and same_port and self.host_ok(host_header)

    def fetch_problem(self, headers: dict[str, str]) -> str:
        """Why an HTTP request must be refused as coming from another site ("" if it may be served).

        ``headers``: lowercased names. A present ``Origin`` must be this server; ``Sec-Fetch-Site``
        must be ``same-origin`` or ``none``, or ``same-site`` with an ``Origin`` that is this server.
        """
        origin = headers.get("origin")
        host = headers.get("host", "")
        proven = origin is not None and self.origin_ok(origin, host)
        if origin is not None and not proven:
            return f"refused: Origin {ascii(origin[:100])} is not this viewer (cross-site request guard)"
        site = headers.get("sec-fetch-site")
        if site is None or site in _FETCH_SITES_OK or (site == "same-site" and proven):
            return ""
        return (
            f"refused: a {ascii(site[:40])} request (Sec-Fetch-Site) is not from this viewer's own page: "
            "open the viewer's URL in the address bar"
        )

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
        cookie: SimpleCookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no token
            return False, False
        c = cookie.get(self.cookie_name)
        if c is not None and secrets.compare_digest(c.value.encode(), self.token.encode()):
            return True, False
        return False, False


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    """Request headers by lowercased name; a repeated header is joined with ", " (so a second Host or
    Origin makes the value unparseable and the request refused), cookies with "; "."""
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        name, value = k.decode("latin-1").lower(), v.decode("latin-1")
        out[name] = f"{out[name]}{'; ' if name == 'cookie' else ', '}{value}" if name in out else value
    return out


class SecurityMiddleware:
    """Pure ASGI middleware applying a :class:`SecurityPolicy` to HTTP requests and WebSocket upgrades,
    and adding :func:`security_headers` to every HTTP response that passes through it."""

    def __init__(self, app: Any, policy: SecurityPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host", "")
        problem, status = "", 0
        if not self.policy.host_ok(host):
            problem, status = f"refused: Host {ascii(host[:100])} is not this viewer (DNS rebinding guard)", 403
        elif kind == "websocket" and not self.policy.origin_ok(headers.get("origin"), host):
            problem, status = f"refused: WebSocket Origin {ascii(headers.get('origin'))[:80]} is not this viewer", 403
        elif kind == "http":
            problem = self.policy.fetch_problem(headers)
            status = 403 if problem else 0
        ok, from_query = self.policy.token_ok(scope.get("query_string", b"").decode("latin-1"), headers)
        if not problem and not ok:
            problem, status = "refused: this viewer needs the token printed in its URL", 401
        if problem:
            if kind == "websocket":
                # Closing before accept makes the server answer the upgrade with HTTP 403.
                await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
                return
            from starlette.responses import JSONResponse

            await JSONResponse({"error": problem}, status_code=status)(scope, receive, self._sender(send, False))
            return
        if kind == "websocket":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, self._sender(send, from_query and self.policy.token is not None))

    def _sender(self, send: Any, set_cookie: bool) -> Any:
        """``send`` adding the security headers (and the token cookie after a tokened page load)."""
        cookie = ""
        if set_cookie:
            cookie = f"{self.policy.cookie_name}={self.policy.token}; Path=/; HttpOnly; SameSite=Strict"

        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                ctype = next((v.decode("latin-1") for k, v in raw if k.lower() == b"content-type"), "")
                extra = [(k.encode(), v.encode()) for k, v in security_headers(ctype)]
                if not any(k.lower() == b"cache-control" for k, _ in raw):
                    extra.append((b"cache-control", b"no-store"))
                names = {k for k, _ in extra}
                raw = [(k, v) for k, v in raw if k.lower() not in names] + extra
                if cookie:
                    raw.append((b"set-cookie", cookie.encode()))
                message = {**message, "headers": raw}
            await send(message)

        return wrapped
