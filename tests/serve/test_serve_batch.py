"""Queued requests answered together (llmri.serve.batch), in-process on a tiny random model: each row
streams its own tokens and ends on its own (its max_tokens, stop string, EOS, its client leaving), the
same tokens as the request alone, each its own complete session; what cannot share forwards runs alone."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import llmri  # noqa: E402


class Hold:
    """A job that keeps the worker busy until released, so the requests sent meanwhile queue up."""

    def __init__(self, worker) -> None:
        self.go, self.running = threading.Event(), threading.Event()
        worker.jobs.put(self)
        assert self.running.wait(60)  # taken alone: what is sent from now on queues behind it

    def run(self) -> None:
        self.running.set()
        self.go.wait(60)

    def cancel(self) -> None:
        self.go.set()

    def batch_key(self) -> None:
        return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from starlette.testclient import TestClient

    from helpers import tiny_model
    from llmri.readouts.sae import SAE
    from llmri.serve import ModelRegistry, ServedModel, create_serve_app, steered
    from llmri.viewer.live import ModelEngine

    w = torch.randn(32, 48, generator=torch.Generator().manual_seed(0)) / 32**0.5
    sae = SAE(W_enc=w, b_enc=torch.zeros(48), W_dec=w.T.contiguous(), b_dec=torch.zeros(32), architecture="relu",
              name="r1", source_format="test", path="", layer=1, signal="resid")  # fmt: skip
    engine = ModelEngine(tiny_model(), lens=True, attention=True, saes=[sae], sae_k=4)
    registry = ModelRegistry()
    base = registry.add(ServedModel("tiny", engine))
    registry.add(steered(base, "up", [llmri.steer(torch.ones(32).numpy(), [1], scale=9.0)]))
    store = llmri.open_store(tmp_path_factory.mktemp("batch") / "s.zarr", create=True)
    gate = create_serve_app(registry, store, max_batch=4)
    with TestClient(gate, base_url="http://127.0.0.1:8000") as c:
        c.store, c.worker = store, gate.app.state.serve.worker
        yield c
    gate.app.state.serve.close()


BODIES = [
    {"prompt": "Once upon a time", "max_tokens": 12, "ignore_eos": True},
    {"prompt": "ab", "max_tokens": 5, "ignore_eos": True},
    {"prompt": "The quick brown fox jumps", "max_tokens": 9},
    {"prompt": "xyz", "max_tokens": 16, "ignore_eos": True, "stop": ["\x00"]},
]


def post(c, body: dict, model: str = "tiny") -> tuple[str, str]:
    """Streamed: the text from its chunks, and the session id."""
    full = {"model": model, "temperature": 0, "stream": True, **body}
    with c.stream("POST", "/v1/completions", json=full) as r:
        assert r.status_code == 200
        sid = r.headers["x-llmri-session"].split("/")[1]
        chunks = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    text = "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"])
    return text, sid


def until(cond, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def together(c, bodies: list[dict], models: list[str] | None = None, during=None) -> list[tuple[str, str]]:
    """``bodies`` sent at once while the worker is held, so they are taken from the queue together;
    ``during()`` runs once they are released."""
    hold = Hold(c.worker)
    out: list = [None] * len(bodies)
    models = models or ["tiny"] * len(bodies)

    def one(i: int) -> None:
        out[i] = post(c, bodies[i], models[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    until(lambda: c.worker.jobs.qsize() >= len(bodies))
    hold.go.set()
    if during is not None:
        during()
    for t in threads:
        t.join(120)
    return out


def tokens(s) -> list[int]:
    return [int(i) for i, r in zip(s.tokens.ids, s.tokens.role, strict=True) if r == "generated"]


@pytest.mark.slow  # ~4 s alone, over 10 s on a shared CPU
def test_a_batch_streams_each_row_as_alone(server):
    batched = together(server, BODIES)
    alone = [post(server, b) for b in BODIES]
    for (text, sid), (ref_text, ref_sid), body in zip(batched, alone, BODIES, strict=True):
        s, ref = server.store.session(sid), server.store.session(ref_sid)
        assert s.meta["serve"]["batch"] == 4 and ref.meta["serve"]["batch"] == 1
        assert s.status == "complete" and text == s.text == ref_text
        assert tokens(s) == tokens(ref) and len(tokens(s)) <= body["max_tokens"]
        assert s.meta["stop_reason"] == ref.meta["stop_reason"] and len(s) == len(ref)
        for sig in ref.signals:
            assert (abs(s.norms(sig) - ref.norms(sig)) <= 1e-3 * (1 + abs(ref.norms(sig)))).all()
        assert (s.lens().top_ids[:, :, 0] == ref.lens().top_ids[:, :, 0]).mean() > 0.95
        np.testing.assert_allclose(s.attention().top_weight, ref.attention().top_weight, atol=1e-3)  # NaN: no key
        assert (s.sae("r1").ids == ref.sae("r1").ids).mean() > 0.95


def test_a_variant_runs_alone_beside_a_batch(server):
    models = ["tiny", "tiny+up", "tiny", "tiny"]
    got = together(server, BODIES, models)
    sizes = [server.store.session(sid).meta["serve"]["batch"] for _, sid in got]
    assert sizes == [3, 1, 3, 3]
    steered = server.store.session(got[1][1])
    assert steered.meta["interventions"] and steered.status == "complete"
    assert got[1][0] == post(server, BODIES[1], "tiny+up")[0]


@pytest.mark.slow
def test_a_row_whose_client_leaves_ends_alone(server):
    bodies = [*BODIES[:3], {"prompt": "long", "max_tokens": 400, "ignore_eos": True}]

    def leave() -> None:
        until(lambda: len(server.worker.taken) == 4)
        job = next(j for j in server.worker.taken if j.req.max_tokens == 400)
        until(lambda: job._stream is not None and job._stream.answer is not None and len(job._stream.answer.full) > 3)
        job.cancel()  # what the route does when its client goes away

    out = together(server, bodies, during=leave)
    s = server.store.session(out[3][1])
    assert s.status == "complete" and s.meta["finish_reason"] == "disconnected" and len(tokens(s)) < 400
    assert s.meta["serve"]["batch"] == 4
    for (text, sid), body in zip(out[:3], bodies[:3], strict=True):
        assert server.store.session(sid).status == "complete" and text == post(server, body)[0]


@pytest.mark.slow
def test_a_model_the_batched_forward_refuses_runs_row_by_row(server, monkeypatch):
    from llmri.backends.hf import batch

    def refuse(self, backend, layers=None):
        raise llmri.CaptureError("hf: this model keeps no KV cache")

    monkeypatch.setattr(batch.BatchRunner, "__init__", refuse)
    got = together(server, BODIES[:3])
    monkeypatch.undo()
    for (text, sid), body in zip(got, BODIES[:3], strict=True):
        s = server.store.session(sid)
        assert s.meta["serve"]["batch"] == 3 and s.status == "complete" and text == post(server, body)[0]
