"""``create_serve_app()``: the viewer app (sessions at ``/``, live as they record) with OpenAI's API
under ``/v1``, and :func:`run` to serve it.

Security is the viewer's (:mod:`llmri.viewer.security`): Host allow-list and Origin checks on every
route; beyond loopback an API key is required, and it is the viewer's token: API clients send it as
``Authorization: Bearer KEY``, a browser opens ``/?token=KEY`` once (the viewer's cookie follows).
:class:`ServeGate` answers a refused ``/v1`` request in OpenAI's error shape and turns a valid
Bearer key into the viewer's token header, then the viewer's own middleware checks it again.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass, field
from typing import Any

from .._errors import require
from .errors import APIError, error_response, unauthorized
from .registry import ModelRegistry
from .worker import ModelWorker

#: Defaults of the limits (``llmri serve`` flags)
MAX_BODY = 4 * 1024 * 1024
MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 256
MAX_QUEUE = 256
MAX_BATCH = 8


@dataclass
class ServeState:
    """What the ``/v1`` routes use: the models, the store sessions go to (and its viewer id), the
    worker, the limits."""

    registry: ModelRegistry
    store: Any
    store_id: str = "s0"
    max_body: int = MAX_BODY
    max_tokens_limit: int = MAX_TOKENS_LIMIT
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    worker: ModelWorker = field(default_factory=ModelWorker)

    def close(self) -> None:
        self.worker.close()
        for engine in self.registry.engines():
            engine.close()


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class ServeGate:
    """Outermost ASGI layer: ``/v1`` refusals in OpenAI's shape (403 Host/Origin, 401 key), and a valid
    ``Authorization: Bearer`` key passed on as the viewer's token (so the viewer's routes take it too)."""

    def __init__(self, app: Any, policy: Any) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        token = self.policy.token
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if token and bearer and secrets.compare_digest(bearer.encode(), token.encode()):
            raw = [(k, v) for k, v in scope["headers"] if k.lower() != b"x-llmri-token"]
            scope = {**scope, "headers": [*raw, (b"x-llmri-token", token.encode())]}
            headers["x-llmri-token"] = token
        if scope["type"] == "http" and scope.get("path", "").startswith("/v1"):
            problem = self._problem(scope, headers)
            if problem is not None:
                await error_response(problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, scope: dict[str, Any], headers: dict[str, str]) -> APIError | None:
        host = headers.get("host", "")
        if not self.policy.host_ok(host):
            return APIError(f"refused: Host {ascii(host[:100])} is not this server (DNS rebinding guard)", 403,
                            code="forbidden")  # fmt: skip
        why = self.policy.fetch_problem(headers)
        if why:
            return APIError(why, 403, code="forbidden")
        ok, _ = self.policy.token_ok(scope.get("query_string", b"").decode("latin-1"), headers)
        return None if ok else unauthorized()


def create_serve_app(
    registry: ModelRegistry,
    store: Any,
    *,
    label: str = "sessions",
    port: int | None = None,
    api_key: str | None = None,
    remote: bool = False,
    max_body: int = MAX_BODY,
    max_tokens_limit: int = MAX_TOKENS_LIMIT,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    max_queue: int = MAX_QUEUE,
    max_batch: int = MAX_BATCH,
) -> Any:
    """The viewer over ``store`` with the ``/v1`` API of ``registry``'s models recording into it.

    Parameters
    ----------
    registry
        The model names served (:class:`~.registry.ModelRegistry`).
    store
        A :class:`~llmri.FrameStore`: every request becomes one of its sessions; the viewer shows it as ``label``.
    port
        The port listened on (the Host check); ``None`` until :func:`run` binds.
    api_key
        Required on every route when set (``Authorization: Bearer``, or the viewer's ``?token=``); must be
        set when ``remote``.
    max_body, max_tokens_limit, default_max_tokens, max_queue
        Request body bytes (413 beyond); the largest ``max_tokens`` (400 beyond) and the one used when a
        request gives none; requests waiting for the model (503 beyond).
    max_batch
        The most requests generated together, sharing each forward (:mod:`.batch`); 1: one at a time.

    Returns
    -------
    ServeGate
        The ASGI app; ``.app`` is the FastAPI app (``.app.state.llmri`` the viewer's state,
        ``.app.state.serve`` the :class:`ServeState`).
    """
    require("fastapi", "viewer")
    from ..viewer.app import create_app
    from .errors import install_error_handlers
    from .routes import router

    if remote and not api_key:
        raise ValueError("a server beyond loopback needs an API key")
    app = create_app({label: store}, port=port, token=api_key, remote=remote)
    state = ServeState(
        registry, store, "s0", max_body, max_tokens_limit, default_max_tokens, ModelWorker(max_queue, max_batch)
    )
    app.state.serve = state
    install_error_handlers(app)
    app.include_router(router(state))
    return ServeGate(app, app.state.llmri.policy)


def run(gate: ServeGate, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False) -> None:
    """Serve until Ctrl+C (the viewer's bind and uvicorn configuration); prints the addresses first."""
    uvicorn = require("uvicorn", "viewer")
    from ..viewer.security import ViewerError, is_loopback
    from ..viewer.serve import bind, server_config, url_for

    policy = gate.policy
    if not is_loopback(host) and not policy.remote:
        raise ViewerError(f"--host {host} is not a loopback address: give --api-key KEY to expose the server")
    sock = bind(host, port)
    policy.port = actual = sock.getsockname()[1]
    base = url_for(host, actual).rstrip("/")
    print(f"llmri serve: OpenAI-compatible API at {base}/v1, sessions live at {base}/  (Ctrl+C to stop)", flush=True)
    if policy.remote:
        print(f"llmri serve: reachable from the network; clients send 'Authorization: Bearer KEY', "
              f"browsers open {base}/?token=KEY once", flush=True)  # fmt: skip
    server = uvicorn.Server(server_config(gate, quiet=quiet))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        gate.app.state.serve.close()
        sys.stdout.flush()
