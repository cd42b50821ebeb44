"""The viewer's SAE feature routes (``/features``...) over a Zarr store of the synthetic model recorded
with a tiny SAE (tests/features_helpers.py), each answer checked against ``session.sae(name)`` of the
same store: the SAE list, a range of rows, the strip, search, the feature_spike markers, a direction
only where the viewer holds the weights (live chat's SAEs), live readouts carrying the rows, and a
clear 4xx for bad input, behind the same Host / Origin guards as every route."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")

from starlette.testclient import TestClient  # noqa: E402

import llmri  # noqa: E402
from features_helpers import LABELS, feature_store  # noqa: E402
from llmri.backends.synthetic import SyntheticModel  # noqa: E402
from llmri.viewer import create_app  # noqa: E402
from llmri.viewer.encoding import decode_array  # noqa: E402
from llmri.viewer.live import LiveChat, ModelEngine  # noqa: E402
from llmri.viewer.live.turn import send_readouts  # noqa: E402

BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    path = tmp_path_factory.mktemp("features") / "f.zarr"
    sae, plain, spiked, feature, at = feature_store(path)
    return {"path": path, "sae": sae, "plain": plain, "spiked": spiked, "feature": feature, "at": at}


@pytest.fixture(scope="module")
def client(recorded):
    return TestClient(create_app(str(recorded["path"]), port=8000), base_url=BASE)


def _url(sid: str, what: str = "") -> str:
    return f"/api/sessions/s0/{sid}/features" + (f"/{what}" if what else "")


def _session(recorded, which: str = "spiked"):
    return llmri.open_store(str(recorded["path"])).session(recorded[which])


def test_the_sae_list_is_the_sessions_record(client, recorded):
    s = _session(recorded)
    f = s.sae("toy")
    got = client.get(_url(recorded["spiked"])).json()
    assert got["total"] == len(s) and got["k"] == 4 and [x["name"] for x in got["saes"]] == ["toy"]
    rec = got["saes"][0]
    want = {k: v for k, v in s.meta["sae"]["saes"][0].items() if k != "labels"}
    assert {k: rec[k] for k in want} == want and "labels" not in rec
    assert rec["n_labels"] == len(LABELS) and rec["direction"] is False
    assert rec["mean"]["l0"] == pytest.approx(float(f.l0.mean()))
    assert rec["mean"]["fvu"] == pytest.approx(float(f.fvu.mean()), rel=1e-5)


def test_rows_are_the_stored_top_k(client, recorded):
    f = _session(recorded).sae("toy")
    got = client.get(_url(recorded["spiked"], "toy"), params={"start": 3, "stop": 11}).json()
    assert (got["start"], got["stop"], got["total"], got["k"]) == (3, 11, len(f), 4)
    np.testing.assert_array_equal(np.array(got["ids"]), f.ids[3:11])
    np.testing.assert_array_equal(np.array(got["values"], dtype=np.float32), f.values[3:11].astype(np.float32))
    np.testing.assert_array_equal(np.array(got["l0"]), f.l0[3:11])
    np.testing.assert_allclose(np.array(got["fvu"]), f.fvu[3:11], rtol=1e-6)
    np.testing.assert_allclose(np.array(got["cosine"]), f.cosine[3:11], rtol=1e-6)
    present = set(f.ids[3:11].reshape(-1).tolist())
    assert got["labels"] == {str(i): t for i, t in LABELS.items() if i in present}
    # past the end: clamped, as the other range routes
    tail = client.get(_url(recorded["spiked"], "toy"), params={"start": len(f) - 2, "stop": 10**6}).json()
    assert (tail["start"], tail["stop"]) == (len(f) - 2, len(f)) and len(tail["ids"]) == 2


def test_the_strip_is_each_features_activation(client, recorded):
    f = _session(recorded).sae("toy")
    feats = [recorded["feature"], *sorted(LABELS)]
    r = client.get(_url(recorded["spiked"], "toy/strip"), params={"feature": [str(x) for x in feats]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-llmri-array")
    header, arr = decode_array(r.content)
    assert header["kind"] == "featurestrip" and header["features"] == feats and arr.shape == (len(feats), len(f))
    assert header["labels"] == [LABELS.get(i, "") for i in feats]
    for row, i in zip(arr, feats, strict=True):
        np.testing.assert_array_equal(row, f.activation(i))
    assert header["max"] == [float(row.max()) for row in arr]
    same = client.get(_url(recorded["spiked"], "toy/strip") + "?feature=" + ",".join(map(str, feats)))
    assert same.content == r.content  # feature=1,2 as feature=1&feature=2


def test_search_by_label_and_by_id(client, recorded):
    f = _session(recorded).sae("toy")
    present = set(f.ids[f.ids >= 0].tolist())
    got = client.get(_url(recorded["spiked"], "toy/search"), params={"q": "BLUE"}).json()
    want = [i for i, t in LABELS.items() if "blue" in t and i in present]
    assert [m["feature"] for m in got["matches"]] == want
    for m in got["matches"]:
        a = f.activation(m["feature"])
        assert m["label"] == LABELS[m["feature"]] and m["fires"] == int((f.ids == m["feature"]).any(-1).sum())
        assert m["max"] == pytest.approx(float(a.max())) and m["token"] == int(np.argmax(a))
    feature = recorded["feature"]
    by_id = client.get(_url(recorded["spiked"], "toy/search"), params={"q": str(feature)}).json()
    assert by_id["matches"][0]["feature"] == feature
    absent = next(i for i in range(32) if i not in present)
    assert client.get(_url(recorded["spiked"], "toy/search"), params={"q": str(absent)}).json()["matches"] == []
    top = client.get(_url(recorded["spiked"], "toy/search"), params={"limit": 3}).json()
    assert len(top["matches"]) == 3 and top["matches"][0]["fires"] >= top["matches"][-1]["fires"]


def test_a_feature_spike_is_a_marker(client, recorded):
    got = client.get(f"/api/sessions/s0/{recorded['spiked']}/markers").json()["markers"]
    spikes = [m for m in got if m["kind"] == "feature_spike"]
    assert [m["token"] for m in spikes] == [recorded["at"]]
    assert f"feature {recorded['feature']}" in spikes[0]["reason"] and spikes[0]["layer"] == 2
    assert spikes[0]["signal"] == "resid"
    plain = client.get(f"/api/sessions/s0/{recorded['plain']}/markers").json()["markers"]
    assert not [m for m in plain if m["kind"] == "feature_spike"]  # the same session unspiked: none


BAD = [
    ("toy?start=-1", 400, "start and stop"),
    ("toy/strip", 400, "feature"),
    ("toy/strip?feature=32", 400, "no feature 32"),
    ("toy/strip?feature=-1", 400, "no feature -1"),
    ("toy/strip?feature=abc", 400, "whole number"),
    ("toy/strip?" + "&".join(f"feature={i}" for i in range(17)), 400, "1 to 16"),
    ("toy/search?limit=0", 400, "limit"),
    ("toy/search?q=" + "x" * 201, 400, "200 characters"),
    ("toy/direction?feature=x", 400, "whole number"),
    ("toy/direction", 400, "feature"),
    ("toy/direction?feature=1&format=xml", 400, "json or npy"),
    ("nope", 404, "no SAE 'nope'"),
    ("nope/strip?feature=1", 404, "no SAE"),
    ("toy/direction?feature=3", 404, "does not hold"),
]


@pytest.mark.parametrize(("what", "status", "says"), BAD)
def test_bad_input_is_one_clear_line(client, recorded, what, status, says):
    r = client.get(_url(recorded["spiked"], what))
    assert r.status_code == status and says in r.json()["error"], r.json()
    assert "\n" not in r.json()["error"]


def test_unknown_session_and_a_session_without_saes(client, recorded, tmp_path):
    assert client.get("/api/sessions/s0/nope/features").status_code == 404
    store = llmri.open_store(str(recorded["path"]))
    s = llmri.capture(SyntheticModel(), "Hi", max_new_tokens=2, store=store)
    assert client.get(_url(s.id)).json()["saes"] == []
    assert client.get(_url(s.id, "toy")).status_code == 404


@pytest.mark.parametrize(
    "headers", [{"host": "evil.example:8000"}, {"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}]
)
def test_foreign_host_or_origin_refused(client, recorded, headers):
    for what in ("", "toy", "toy/strip?feature=1", "toy/search?q=a", "toy/direction?feature=1"):
        assert client.get(_url(recorded["spiked"], what), headers=headers).status_code == 403


def test_direction_of_a_live_sae(recorded):
    sae = recorded["sae"]
    live = LiveChat(ModelEngine(SyntheticModel(), saes=[sae], sae_k=4))
    c = TestClient(create_app(str(recorded["path"]), port=8000, live=live), base_url=BASE)
    try:
        assert c.get(_url(recorded["spiked"])).json()["saes"][0]["direction"] is True
        got = c.get(_url(recorded["spiked"], "toy/direction"), params={"feature": 5}).json()
        assert (got["feature"], got["label"], got["layer"], got["signal"], got["d_in"]) == (
            5,
            LABELS[5],
            2,
            "resid",
            64,
        )
        row = sae.W_dec[5].numpy()  # the decoder row, unit length (whatever type sae.direction returns)
        np.testing.assert_allclose(np.array(got["direction"], dtype=np.float32), row / np.linalg.norm(row), rtol=1e-5)
        r = c.get(_url(recorded["spiked"], "toy/direction"), params={"feature": 5, "format": "npy"})
        assert r.headers["content-disposition"] == 'attachment; filename="toy-feature5.npy"'
        np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), np.array(got["direction"], dtype=np.float32))
        # another SAE of the same name (other weights) is not the session's
        other = llmri.readouts.sae.SAE(**{**sae.__dict__, "W_dec": sae.W_dec * 2, "meta": {}})
        live.engine.saes = [other]
        assert c.get(_url(recorded["spiked"], "toy/direction"), params={"feature": 5}).status_code == 404
    finally:
        live.close()


def test_live_readouts_carry_each_frames_features(recorded):
    sae = recorded["sae"]
    s = llmri.capture(SyntheticModel(), "Hello", saes=[sae], sae_k=4, max_new_tokens=3)
    frames = [s.frame(i) for i in range(len(s))]
    sent: list = []
    send_readouts(lambda item, key: sent.append(item), "s0/x", frames[2:5])
    doc = json.loads(sent[0])
    assert (doc["type"], doc["start"], doc["stop"]) == ("readouts", 2, 5) and "lens" not in doc
    f = s.sae("toy")
    np.testing.assert_array_equal(np.array(doc["sae"]["toy"]["ids"]), f.ids[2:5])
    np.testing.assert_array_equal(np.array(doc["sae"]["toy"]["values"], dtype=np.float16), f.values[2:5])
    np.testing.assert_array_equal(np.array(doc["sae"]["toy"]["l0"]), f.l0[2:5])
    bare = llmri.capture(SyntheticModel(), "Hello", max_new_tokens=1)
    sent.clear()
    send_readouts(lambda item, key: sent.append(item), "s0/y", [bare.frame(0)])
    assert sent == []  # nothing to send: no message
