"""Paired runs over the viewer's API, in process on the synthetic backend: ``GET /api/comparison`` is
``llmri.compare`` on the same pair, ``GET .../patching`` the stored PatchingResult, and
``POST .../patching/run`` opens a stored cell's run and refuses what it cannot run, with a clear 4xx."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")

from starlette.testclient import TestClient  # noqa: E402

import llmri  # noqa: E402
from llmri.interventions.patching import PatchingResult  # noqa: E402
from llmri.viewer import create_app  # noqa: E402
from llmri.viewer.encoding import MEDIA_TYPE, decode_array  # noqa: E402
from llmri.viewer.live import LiveChat, ModelEngine  # noqa: E402

BASE = "http://127.0.0.1:8000"
JSON = {"content-type": "application/json"}

SWEEP = PatchingResult(
    values=np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 7,
    signals=("resid", "mlp"),
    layers=(0, 2, 4),
    tokens=("W", "h", "y", "?"),
    clean=3.0,
    corrupt=-1.0,
    metric="logit_diff",
    targets=(" a", " b"),
)


@pytest.fixture(scope="module")
def pairs(synthetic_model):
    st = llmri.MemoryFrameStore()
    base = llmri.capture(synthetic_model, "Why is the sky blue?", chat=False, max_new_tokens=6, store=st)
    run = llmri.capture(synthetic_model, "Why is the sky gray?", chat=False, max_new_tokens=6, store=st,
                        meta={"baseline": base.id})  # fmt: skip
    other = llmri.capture(synthetic_model, "Why?", chat=False, max_new_tokens=2, store=st, reducer="neurons")
    sweep = llmri.capture(synthetic_model, "Why?", chat=False, max_new_tokens=0, store=st,
                          meta={"baseline": base.id, "patching": SWEEP.to_dict()})  # fmt: skip
    cell = {"sweep": sweep.id, "signal": "mlp", "layer": 2, "position": 1}
    ran = llmri.capture(synthetic_model, "Why?", chat=False, max_new_tokens=0, store=st,
                        meta={"baseline": sweep.id, "patched_cell": cell})  # fmt: skip
    ids = {"base": base.id, "run": run.id, "other": other.id, "sweep": sweep.id, "ran": ran.id}
    return st, ids


@pytest.fixture(scope="module")
def client(pairs):
    return TestClient(create_app(pairs[0], port=8000), base_url=BASE)


def test_the_comparison_is_llmri_compare_on_the_same_pair(client, pairs):
    st, ids = pairs
    r = client.get(f"/api/comparison?a=s0/{ids['run']}&b=s0/{ids['base']}")
    assert r.status_code == 200 and r.headers["content-type"] == MEDIA_TYPE
    head, arr = decode_array(r.content)
    want = llmri.compare(st.session(ids["run"]), st.session(ids["base"]))
    assert head["kind"] == "comparison" and head["metrics"] == ["cosine", "rel_l2"]
    assert head["signals"] == list(want.cosine) and head["a"] == ids["run"] and head["b"] == ids["base"]
    assert head["first_divergence"] == want.first_divergence == len("Why is the sky ")
    n, n_layers = min(len(st.session(ids["run"])), len(st.session(ids["base"]))), 6
    assert arr.shape == (2, len(want.cosine), n, n_layers) and arr.dtype == np.float32
    for i, s in enumerate(want.cosine):
        np.testing.assert_array_equal(arr[0, i], want.cosine[s].astype(np.float32))
        np.testing.assert_array_equal(arr[1, i], want.rel_l2[s].astype(np.float32))
    assert (arr[1, :, : head["first_divergence"]] == 0).all() and (arr[1, :, head["first_divergence"]] > 0).any()
    again = client.get(f"/api/comparison?a=s0/{ids['run']}&b=s0/{ids['base']}")  # kept: the same answer
    assert again.content == r.content


def test_a_session_with_no_frames_yet_compares_as_empty(synthetic_model):
    st = llmri.MemoryFrameStore()
    base = llmri.capture(synthetic_model, "Why?", chat=False, max_new_tokens=2, store=st)
    w = st.create_session({**base.meta, "baseline": base.id})  # a re-run that has not begun (live chat)
    r = TestClient(create_app(st, port=8000), base_url=BASE).get(f"/api/comparison?a=s0/{w.id}&b=s0/{base.id}")
    head, arr = decode_array(r.content)
    assert r.status_code == 200 and arr.shape == (2, 3, 0, 6) and head["first_divergence"] is None
    w.close()


def test_a_run_that_just_ended_is_compared_as_it_ended(synthetic_model, tmp_path):
    path = tmp_path / "live.zarr"
    base = llmri.capture(synthetic_model, "Why?", chat=False, max_new_tokens=2, store=path)
    client = TestClient(create_app(path, port=8000, poll_interval=60), base_url=BASE)
    w = llmri.open_store(path).create_session({**base.meta, "baseline": base.id})
    url = f"/api/comparison?a=s0/{w.id}&b=s0/{base.id}"
    assert decode_array(client.get(url).content)[1].shape[2] == 0  # read while recording, no frame yet
    for i in range(len(base)):
        w.append(base.frame(i))
    w.close()  # the page asks again at once: the reader kept while it recorded is not the answer
    head, arr = decode_array(client.get(url).content)
    assert arr.shape[2] == len(base) and head["first_divergence"] is None and (arr[1] == 0).all()


def test_the_summary_names_the_baseline_and_the_sweep(client, pairs):
    _, ids = pairs
    by_id = {s["id"]: s for s in client.get("/api/sessions").json()["sessions"]}
    assert by_id[ids["run"]]["baseline"] == ids["base"] and by_id[ids["base"]]["baseline"] == ""
    assert by_id[ids["sweep"]]["patching"] is True and by_id[ids["run"]]["patching"] is False


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ("a=s0/{run}&b=s0/{other}", 409, "cannot be compared: different reducers"),
        ("a=s0/{run}&b=s0/nope", 404, "no such session"),
        ("a=s9/{run}&b=s0/{base}", 404, "no such store"),
        ("a={run}&b=s0/{base}", 404, "STORE/SESSION"),
        ("a=s0/{run}", 400, "bad parameter"),
        ("a=s0/../x&b=s0/{base}", 404, "STORE/SESSION"),
        ("a=s0/x%00y&b=s0/{base}", 404, "no such session"),
    ],
)
def test_a_comparison_that_cannot_be_made_says_why(client, pairs, query, status, says):
    r = client.get("/api/comparison?" + query.format(**pairs[1]))
    assert r.status_code == status and says in r.json()["error"]


def test_the_heatmap_route_returns_the_stored_sweep(client, pairs):
    st, ids = pairs
    d = client.get(f"/api/sessions/s0/{ids['sweep']}/patching").json()
    want = PatchingResult.of(st.session(ids["sweep"]))
    np.testing.assert_allclose(d["values"], want.values, atol=1e-6)
    np.testing.assert_allclose(d["normalized"], want.normalized(), atol=1e-6)
    assert d["signals"] == list(want.signals) and d["layers"] == list(want.layers) and d["tokens"] == list(want.tokens)
    assert (d["clean"], d["corrupt"], d["metric"], d["targets"]) == (3.0, -1.0, "logit_diff", [" a", " b"])
    assert d["baseline"] == ids["base"] and d["runs"] == {"mlp/2/1": ids["ran"]}
    r = client.get(f"/api/sessions/s0/{ids['run']}/patching")
    assert r.status_code == 400 and "holds no patching sweep" in r.json()["error"]


def test_a_stored_cell_opens_its_run(client, pairs):
    _, ids = pairs
    r = client.post(f"/api/sessions/s0/{ids['sweep']}/patching/run", json={"signal": "mlp", "layer": 2, "position": 1})
    assert r.status_code == 200 and r.json() == {"key": f"s0/{ids['ran']}", "ran": False}


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        ({"signal": "resid", "layer": 0, "position": 0}, {}, 409, "holds no model"),
        ({"signal": "attn", "layer": 0, "position": 0}, {}, 400, "no such cell"),
        ({"signal": "resid", "layer": 1, "position": 0}, {}, 400, "no such cell"),
        ({"signal": "resid", "layer": 0, "position": 4}, {}, 400, "no such cell"),
        ({"signal": "resid", "layer": True, "position": 0}, {}, 400, "whole numbers"),
        ({"signal": "resid", "layer": 0}, {}, 400, "a cell is"),
        ("signal=resid", {"content-type": "application/x-www-form-urlencoded"}, 400, "Content-Type: application/json"),
        ("{not json", JSON, 400, "not JSON"),
        ("x" * 2000, JSON, 400, "over 1024 bytes"),
        ({"signal": "resid", "layer": 0, "position": 0}, {"origin": "http://evil.example"}, 403, "not this viewer"),
    ],
)
def test_a_cell_that_cannot_be_run_says_why(client, pairs, body, headers, status, says):
    url = f"/api/sessions/s0/{pairs[1]['sweep']}/patching/run"
    payload = {"json": body} if isinstance(body, dict) else {"content": body}
    r = client.post(url, headers=headers, **payload)
    assert r.status_code == status and says in r.json()["error"], r.json()


def test_a_cell_needs_the_hf_backend_and_a_free_model(pairs, synthetic_model):
    st, ids = pairs
    app = create_app(st, port=8000, live=LiveChat(ModelEngine(synthetic_model)))
    client = TestClient(app, base_url=BASE)
    url = f"/api/sessions/s0/{ids['sweep']}/patching/run"
    r = client.post(url, json={"signal": "resid", "layer": 0, "position": 0})
    assert r.status_code == 409 and "hf backend" in r.json()["error"]
    r = client.post(f"/api/sessions/s0/{ids['run']}/patching/run", json={"signal": "resid", "layer": 0, "position": 0})
    assert r.status_code == 400 and "no patching sweep" in r.json()["error"]
