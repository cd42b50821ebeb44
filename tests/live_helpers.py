"""Helpers shared by the live-chat tests: slow and failing synthetic backends, and the llama.cpp server
as a real OpenAI-compatible upstream (the served viewer is ``llmri.testing.ServedApp``)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from llmri.backends.base import BACKENDS
from llmri.backends.synthetic import SyntheticBackend, SyntheticModel


class SlowCapture(SyntheticBackend):
    """The synthetic backend with a pause per forward, so a test can act mid-answer."""

    name = "test-live-slow"
    delay = 0.03

    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True) -> Any:
        time.sleep(self.delay)
        return super().step(input_ids, cache, logits=logits)


class FailingCapture(SyntheticBackend):
    """The synthetic backend that raises after ``model.fail_after`` generated tokens (mid-answer)."""

    name = "test-live-failing"

    def __init__(self, model: Any, signals: Any = ("resid", "attn", "mlp")) -> None:
        super().__init__(model, signals)
        self._steps = 0

    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True) -> Any:
        if input_ids.numel() == 1:
            self._steps += 1
            if self._steps > self._model.fail_after:
                raise RuntimeError("simulated device failure")
        return super().step(input_ids, cache, logits=logits)


for _cls in (SlowCapture, FailingCapture):
    if _cls.name not in BACKENDS:
        BACKENDS.register(_cls.name)(_cls)


class SlowModel(SyntheticModel):
    llmri_backend = "test-live-slow"


class FailingModel(SyntheticModel):
    llmri_backend = "test-live-failing"
    fail_after = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receive_turn(ws: Any, timeout: float = 60) -> dict[str, Any]:
    """Read one turn from a live socket: ``{"json": [...], "frames": [(header, array, bytes)], "done": msg}``."""
    from llmri.viewer.encoding import decode_array

    out: dict[str, Any] = {"json": [], "frames": [], "done": None}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(msg, bytes):
            h, a = decode_array(msg)
            out["frames"].append((h, a, msg))
            continue
        data = json.loads(msg)
        out["json"].append(data)
        if data["type"] == "done":
            out["done"] = data
            return out
    raise TimeoutError("no done message")


def start_llama_server(tmp: Path, n_ctx: int = 2048) -> tuple[subprocess.Popen, str]:
    """``python -m llama_cpp.server`` on a free loopback port serving the bundled GGUF."""
    from llmri.models.identity import default_gguf_path

    port = free_port()
    log_path = tmp / f"llama-server-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf_path())]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited: {log_path.read_text(errors='replace')[-1500:]}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    kill(proc)
    raise RuntimeError("llama_cpp.server did not answer within 120 s")


def kill(proc: subprocess.Popen, hard: bool = False) -> None:
    """Terminate (``hard``: SIGKILL) and reap; SIGKILL if it does not end within 15 s."""
    if proc.poll() is None:
        proc.kill() if hard else proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def wait_for(pg, js: str, timeout: float = 60, what: str = "") -> object:
    """Poll ``js`` (a function source) with page.evaluate, which the page's CSP does not block."""
    deadline = time.monotonic() + timeout
    while True:
        value = pg.evaluate(js)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or js}")
        time.sleep(0.05)
