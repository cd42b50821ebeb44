"""Helpers of tests/serve: an in-process ``llmri serve`` app on the synthetic model, a real one in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def make_app(store: Any, model: Any = None, **kw: Any) -> Any:
    """``create_serve_app`` on ``model`` (default: the synthetic model) recording into ``store``."""
    from llmri.backends.synthetic import SyntheticModel
    from llmri.serve import ModelRegistry, ServedModel, create_serve_app
    from llmri.viewer.live import ModelEngine

    engine = ModelEngine(model or SyntheticModel())
    registry = ModelRegistry()
    registry.add(ServedModel("synthetic", engine))
    return create_serve_app(registry, store, **kw)


def start_serve(tmp: Path, *args: str, timeout: float = 180) -> tuple[subprocess.Popen, str, Path]:
    """``llmri serve -o TMP/sessions.zarr --port 0 ARGS`` in a subprocess; ``(proc, base URL, store path)``."""
    store = tmp / "sessions.zarr"
    log_path = tmp / "serve.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    cmd = [sys.executable, "-m", "llmri", "serve", "-o", str(store), "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        m = re.search(r"API at (http://\S+)/v1", text)
        if m:
            return proc, m.group(1), store
        if proc.poll() is not None:
            raise RuntimeError(f"llmri serve exited: {text[-1500:]}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("llmri serve did not start")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def session_of(store_path: Path, response_id: str) -> Any:
    """The session a response's ``id`` (``chatcmpl-SESSION`` / ``cmpl-SESSION``) names, re-read from disk."""
    import llmri

    return llmri.open_store(store_path).session(response_id.split("-", 1)[1])
