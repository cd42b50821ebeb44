"""Helpers for testing and benchmarking llmri's viewer (used by its own tests and benchmarks).

* :class:`ServedApp`: a viewer app served by real uvicorn (the configuration ``llmri view`` uses) on
  a free loopback port, in a daemon thread of this process;
* :func:`launch_chromium`: headless Chromium through Playwright, with the flags every llmri browser
  test runs it with (``LLMRI_CHROMIUM`` names the executable; ``/usr/bin/chromium`` by default).
"""

from __future__ import annotations

import os
from typing import Any

#: The Chromium executable browser tests and benchmarks drive.
CHROMIUM = os.environ.get("LLMRI_CHROMIUM", "/usr/bin/chromium")
#: Headless, no sandbox (containers), no GPU, and nothing that reaches the network on its own.
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium browser from a ``sync_playwright()`` handle."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)


class ServedApp:
    """``app`` (from :func:`llmri.viewer.create_app`) served by uvicorn on a free loopback port in a
    daemon thread: same process, so a test can look at the app's state while it serves."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        from ..viewer.serve import Served, bind, server_config
        from ..viewer.state import state_of

        self.app = app
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        state_of(app).policy.port = self.port
        self.server = uvicorn.Server(server_config(app, quiet=True))
        self._served = Served(self.server, self.sock, f"{self.url}/")
        self.thread = self._served.thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/live"

    def connect(self, **kw: Any) -> Any:
        """A WebSocket client on the live-chat socket (sync ``websockets``), with this page's Origin."""
        from websockets.sync.client import connect

        opts: dict[str, Any] = {"origin": self.url, "max_size": None, "compression": None, **kw}
        return connect(self.ws_url, **opts)

    def close(self) -> None:
        self._served.close()
