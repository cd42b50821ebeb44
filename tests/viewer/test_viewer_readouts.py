"""The viewer's readout routes over real Zarr sessions of the bundled SmolLM2: the lens and attention of
a range (checked against the session's own arrays and the tokenizer), the lens strip, the markers,
the summary's ``readouts``, and a session without readouts or without lens texts."""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("fastapi")

from starlette.testclient import TestClient  # noqa: E402

import llmri  # noqa: E402
from llmri.viewer import create_app  # noqa: E402
from llmri.viewer.encoding import decode_array  # noqa: E402

pytestmark = pytest.mark.slow

BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def stores(real_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("readouts") / "r.zarr"
    with_readouts = llmri.capture(
        real_model,
        "What is the capital of France?",
        chat=True,
        max_new_tokens=8,
        lens=True,
        attention=True,
        store=path,
    )
    plain = llmri.capture(real_model, "Hi!", chat=True, max_new_tokens=3, store=path)
    # a lens session as llmri wrote it before lens/top_text
    old = llmri.capture(real_model, "Hi!", chat=True, max_new_tokens=3, lens=True)
    meta = copy.deepcopy(dict(old.meta))
    meta["lens"] = {"k": 5, "signal": "resid"}
    store = llmri.open_store(path)
    with store.create_session(meta) as w:
        for i in range(len(old)):
            w.append(old.frame(i))
        old_id = w.id
    return path, with_readouts.id, plain.id, old_id


@pytest.fixture(scope="module")
def client(stores):
    return TestClient(create_app(stores[0], port=8000), base_url=BASE)


def _url(sid: str, what: str = "") -> str:
    return f"/api/sessions/s0/{sid}" + (f"/{what}" if what else "")


def test_summary_says_which_readouts(client, stores):
    _, sid, plain, old = stores
    by_id = {s["id"]: s for s in client.get("/api/sessions").json()["sessions"]}
    assert by_id[sid]["readouts"] == ["lens", "attention"]
    assert by_id[plain]["readouts"] == [] and by_id[old]["readouts"] == ["lens"]
    assert client.get(_url(sid)).json()["summary"]["readouts"] == ["lens", "attention"]


def test_lens_range_is_the_sessions_own(client, stores, real_model):
    path, sid, _, _ = stores
    s = llmri.open_store(path).session(sid)
    want = s.lens()
    tok = real_model.tokenizer
    got = client.get(_url(sid, "lens"), params={"start": 3, "stop": 9}).json()
    assert (got["start"], got["stop"], got["total"]) == (3, 9, len(s))
    assert got["layers"] == s.layers
    np.testing.assert_array_equal(np.array(got["top_ids"]), want.top_ids[3:9])
    np.testing.assert_allclose(np.array(got["top_probs"], dtype=np.float32), want.top_probs[3:9], rtol=1e-6)
    np.testing.assert_allclose(np.array(got["next_prob"], dtype=np.float32), want.next_prob[3:9], rtol=1e-6)
    np.testing.assert_array_equal(np.array(got["next_rank"]), want.next_rank[3:9])
    # the texts are the tokenizer's, id by id
    texts = [[[tok.decode([i]) for i in layer] for layer in row] for row in want.top_ids[3:9].tolist()]
    assert got["top_text"] == texts
    assert got["next_id"] == s.tokens.ids[4:10].tolist()
    from llmri.readouts import decision_layers

    assert got["decision"] == decision_layers(want.top_ids[3:9, :, 0]).tolist()
    # the last position has no next token: null probabilities, rank -1, next_id -1
    last = client.get(_url(sid, "lens"), params={"start": len(s) - 1}).json()
    assert last["next_id"] == [-1] and set(last["next_prob"][0]) == {None} and set(last["next_rank"][0]) == {-1}


def test_attention_of_one_token(client, stores):
    path, sid, _, _ = stores
    s = llmri.open_store(path).session(sid)
    t = len(s) - 2
    want = s.attention(t, t + 1)
    got = client.get(_url(sid, "attention"), params={"start": t, "stop": t + 1}).json()
    np.testing.assert_array_equal(np.array(got["top_pos"]), want.top_pos)
    w = np.array(
        [[[[np.nan if x is None else x for x in h] for h in layer] for layer in row] for row in got["top_weight"]]
    )
    np.testing.assert_allclose(w, want.top_weight, rtol=1e-6)
    np.testing.assert_allclose(np.array(got["entropy"], dtype=np.float32), want.entropy, rtol=1e-6)
    np.testing.assert_allclose(np.array(got["sink"], dtype=np.float32), want.sink, rtol=1e-6)
    # a range is cut to 16 positions
    many = client.get(_url(sid, "attention"), params={"start": 0, "stop": 100}).json()
    assert many["stop"] == min(16, len(s))


def test_lens_strip_is_next_prob(client, stores):
    path, sid, _, _ = stores
    s = llmri.open_store(path).session(sid)
    r = client.get(_url(sid, "lensstrip"))
    assert r.headers["content-type"] == "application/x-llmri-array"
    head, arr = decode_array(r.content)
    assert head["kind"] == "lensstrip" and arr.shape == (2, len(s), len(s.layers))
    lens = s.lens()
    np.testing.assert_array_equal(arr[0], lens.next_prob)
    top1 = lens.top_ids[:, :, 0]
    np.testing.assert_array_equal(arr[1], (top1 == top1[:, -1:]).astype(np.float32))
    # the decision layer is the first layer from which [1] stays 1
    from llmri.readouts import decision_layers

    first = [next(layer for layer in range(arr.shape[2]) if arr[1, t, layer:].all()) for t in range(len(s))]
    assert first == decision_layers(top1).tolist()


def test_markers_are_the_readouts(client, stores):
    path, sid, _, _ = stores
    from llmri.readouts import markers

    s = llmri.open_store(path).session(sid)
    got = client.get(_url(sid, "markers")).json()
    assert got["markers"] == [m.to_dict() for m in markers(s)]
    assert got["total"] == len(s)
    again = client.get(_url(sid, "markers")).json()
    assert again == got


def test_a_session_without_readouts(client, stores):
    _, _, plain, _ = stores
    for what in ("lens", "attention", "lensstrip"):
        r = client.get(_url(plain, what))
        assert r.status_code == 400, what
        assert "has no" in r.json()["error"]
    assert client.get(_url(plain, "markers")).status_code == 200
    assert client.get("/api/sessions/s0/nope/lens").status_code == 404
    assert client.get(_url(plain, "lens"), params={"start": -1}).status_code in (400, 422)


def test_an_older_lens_session_has_no_texts(client, stores):
    _, _, _, old = stores
    got = client.get(_url(old, "lens"), params={"start": 0, "stop": 2}).json()
    assert got["top_text"] is None and len(got["top_ids"]) == 2


def test_live_turn_sends_each_frames_readouts_first(real_model, tmp_path):
    import json

    from llmri.testing import ServedApp
    from llmri.viewer.live import LiveChat, ModelEngine

    store = llmri.open_store(tmp_path / "live.zarr", create=True)
    live = LiveChat(ModelEngine(real_model, lens=True, attention=True))
    served = ServedApp(create_app(store, live=live))
    order: list[tuple[str, dict]] = []
    try:
        with served.connect() as ws:
            hello = json.loads(ws.recv(timeout=10))
            assert hello["readouts"] == ["lens", "attention"]
            msgs = [{"role": "user", "content": "Hi!"}]
            ws.send(json.dumps({"type": "chat", "messages": msgs, "settings": {"max_new_tokens": 3}}))
            while True:
                msg = ws.recv(timeout=120)
                if isinstance(msg, bytes):
                    order.append(("frames", decode_array(msg)[0]))
                    continue
                data = json.loads(msg)
                order.append((data["type"], data))
                if data["type"] == "done":
                    break
    finally:
        live.close()
        served.close()
    sid = order[-1][1]["session"].split("/")[1]
    s = store.session(sid)
    lens, att = s.lens(), s.attention()
    frames = [i for i, (kind, _) in enumerate(order) if kind == "frames"]
    assert frames
    for i in frames:
        head = order[i][1]
        kind, ro = order[i - 1]
        assert kind == "readouts" and (ro["start"], ro["stop"]) == (head["start"], head["stop"])
        a, b = ro["start"], ro["stop"]
        np.testing.assert_array_equal(np.array(ro["lens"]["top_ids"]), lens.top_ids[a:b])
        assert ro["lens"]["top_text"] == lens.top_text[a:b].tolist()
        got = np.array([[np.nan if x is None else x for x in row] for row in ro["lens"]["next_prob"]], np.float32)
        np.testing.assert_array_equal(got, lens.next_prob[a:b])
        assert ro["attention"]["index"] == b - 1
        np.testing.assert_array_equal(np.array(ro["attention"]["top_pos"]), att.top_pos[b - 1])


def test_view_refuses_readouts_it_cannot_record():
    import argparse

    from llmri import CaptureError
    from llmri.commands.view import live_plugin

    def args(**kw):
        base = {"paths": [], "model": None, "openai_url": None, "backend": None, "lens": False, "attention": False}
        return argparse.Namespace(**{**base, **kw})

    with pytest.raises(CaptureError, match="give --model too"):
        live_plugin(args(lens=True, openai_url="http://127.0.0.1:1/v1"))
    with pytest.raises(CaptureError, match="llama.cpp engine has no lens"):
        live_plugin(args(model="x.gguf", backend="llama.cpp", attention=True))
    with pytest.raises(CaptureError, match="--lens-dtype goes with --lens"):
        live_plugin(args(model="x", lens_dtype="bfloat16"))


def test_live_lens_in_bfloat16(real_model):
    """``llmri view --model M --lens --lens-dtype bfloat16``: each turn's stream records it."""
    from llmri.viewer.live import ModelEngine

    engine = ModelEngine(real_model, lens=True, lens_dtype="bfloat16")
    settings = {"max_new_tokens": 2, "temperature": 0.0, "top_p": 1.0, "seed": 0, "signals": None, "reducer": "random"}
    st = engine.open([{"role": "user", "content": "Hi"}], settings, None, {})
    try:
        assert st.meta["lens"]["dtype"] == "bfloat16"
        frames = list(st)
        assert np.isfinite(frames[-2].lens.next_prob).all()
    finally:
        st.close()
