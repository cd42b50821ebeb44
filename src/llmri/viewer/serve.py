"""``serve(app, host, port, open_browser)``: run a viewer app with uvicorn on an already-bound socket."""

from __future__ import annotations

import socket
import sys
import threading
import time
import webbrowser
from typing import Any

from .._errors import require
from .security import ViewerError, is_loopback
from .state import state_of


def bind(host: str, port: int) -> socket.socket:
    """Bind a listening socket (port 0 picks a free one); errors become one-line ViewerErrors."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ViewerError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ViewerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_for(host: str, port: int, token: str | None = None) -> str:
    """The URL to open: loopback binds show ``127.0.0.1``; wildcard binds show this machine's name."""
    shown = host
    if host in ("0.0.0.0", "::", ""):
        shown = socket.gethostname()
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def server_config(app: Any, *, quiet: bool = False) -> Any:
    """The uvicorn configuration every llmri viewer runs with.

    WebSocket per-message deflate is off: browsers offer it, and uvicorn would then zlib every
    live frame, noise-like float16 tiles that barely compress, on the CPU the model generates on.
    No ``Server`` header: the viewer does not tell a prober what it runs on.
    """
    uvicorn = require("uvicorn", "viewer")
    return uvicorn.Config(
        app,
        log_level="warning" if not quiet else "error",
        access_log=False,
        lifespan="off",
        ws_per_message_deflate=False,
        server_header=False,
    )


class Served:
    """A viewer app serving in a daemon thread of this process (``serve(..., block=False)``):
    ``url`` to open, :meth:`close` (or ``with``) to stop it."""

    def __init__(self, server: Any, sock: socket.socket, url: str) -> None:
        self.server, self.sock, self.url = server, sock, url
        self.thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="llmri-view")
        self.thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.close()
                raise ViewerError("the viewer server did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<llmri viewer at {self.url}>"


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    open_browser: bool = True,
    *,
    quiet: bool = False,
    block: bool = True,
) -> Served | None:
    """Serve ``app`` (from :func:`create_app`) until interrupted, or in the background.

    Binds first, so ``port=0`` works and the app's Host check learns the real port; prints the URL
    (with the token for remote binds) on stdout, then opens a browser tab unless ``open_browser`` is
    False. ``block=False`` returns at once with a :class:`Served` handle (its ``url``, ``close()``).
    Raises :class:`ViewerError` if the address cannot be bound.
    """
    uvicorn = require("uvicorn", "viewer")
    state = state_of(app)
    if not is_loopback(host) and not state.policy.remote:
        raise ViewerError(f"--host {host} is not a loopback address: pass --allow-remote to expose the viewer")
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    state.policy.port = actual
    url = url_for(host, actual, state.policy.token)
    n = len(state.stores)
    print(f"llmri view: serving {n} store{'s' if n != 1 else ''} at {url}  (Ctrl+C to stop)", flush=True)
    if state.policy.remote:
        print("llmri view: reachable from the network; anyone with the URL (token included) can read it", flush=True)
    server = uvicorn.Server(server_config(app, quiet=quiet))
    if open_browser:
        threading.Timer(0.6, lambda: webbrowser.open(url)).start()
    if not block:
        return Served(server, sock, url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        sys.stdout.flush()
    return None
