"""What tests/serve shares: an in-process app on the synthetic model (fast), and one real ``llmri serve``
subprocess on the bundled model, started once per test session."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from serve_helpers import make_app, start_serve, stop  # noqa: E402


@pytest.fixture
def client(tmp_path):
    """A TestClient of an in-process app (synthetic model) on loopback, its store at ``client.store``."""
    from starlette.testclient import TestClient

    import llmri

    store = llmri.open_store(tmp_path / "s.zarr", create=True)
    gate = make_app(store)
    with TestClient(gate, base_url="http://127.0.0.1:8000") as c:
        c.store = store
        yield c
    gate.app.state.serve.close()


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """One real ``llmri serve`` (bundled model, hf backend) on loopback: ``{"url", "store", "proc"}``."""
    tmp = tmp_path_factory.mktemp("serve")
    proc, url, store = start_serve(tmp, "--max-tokens-limit", "512")
    yield {"url": url, "store": store, "proc": proc, "log": tmp / "serve.log"}
    stop(proc)
