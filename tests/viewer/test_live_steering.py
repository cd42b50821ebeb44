"""Live chat's steering and "re-run this answer steered", server side: ``settings.steer`` is checked
in one line per mistake, a re-run asks the recorded question again (scale 0 gives the same answer bit
for bit) as a session naming its baseline, and a saved direction, a neuron or a direction made on the
spot from prompts each steer the answer (the bundled model over the real socket)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("websockets")

import llmri  # noqa: E402
from live_helpers import receive_turn  # noqa: E402
from llmri.testing import ServedApp  # noqa: E402
from llmri.viewer import create_app  # noqa: E402
from llmri.viewer.live import LiveChat, ModelEngine  # noqa: E402
from llmri.viewer.live.steering import check_steer, rerun_request  # noqa: E402

SAES = [SimpleNamespace(name="r4", d_sae=48)]
ENGINE = SimpleNamespace(steerable=True, n_layers=30, d_model=576, directions={"paris": object()}, saes=SAES)
GOOD = {"kind": "neuron", "layers": [12, 4, 12], "scale": 8, "neuron": 5}
QUESTION = [{"role": "user", "content": "Name a city in Europe."}]


def test_a_good_steer_is_kept_checked():
    assert check_steer(GOOD, ENGINE) == {"kind": "neuron", "layers": [4, 12], "scale": 8.0, "neuron": 5}
    spec = {"kind": "prompts", "layers": [12], "positive": ["Paris is"], "negative": ["Rome is"]}
    assert check_steer(spec, ENGINE)["scale"] == 4.0  # the default
    assert check_steer({"kind": "direction", "layers": [0], "scale": -2, "name": "paris"}, ENGINE)["name"] == "paris"
    assert check_steer(None, ENGINE) is None
    feat = check_steer({"kind": "feature", "layers": [4], "scale": 8, "sae": "r4", "feature": 47}, ENGINE)
    assert feat == {"kind": "feature", "layers": [4], "scale": 8.0, "sae": "r4", "feature": 47}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"kind": "vector"}, "kind must be one of neuron, prompts, direction, feature"),
        ({"kind": "feature", "sae": "r5", "feature": 0}, "no SAE 'r5' in live chat (it has: r4)"),
        ({"kind": "feature", "sae": "r4", "feature": 48}, "feature must be a whole number from 0 to 47"),
        ({"kind": "feature", "sae": "r4", "feature": "1"}, "feature must be a whole number from 0 to 47"),
        ({"layers": []}, "layers must be a list of 1 to 64"),
        ({"layers": [30]}, "from 0 to 29"),
        ({"layers": [True]}, "from 0 to 29"),
        ({"scale": "big"}, "scale must be a number"),
        ({"scale": 1e9}, "scale must be between"),
        ({"neuron": 576}, "neuron must be a whole number from 0 to 575"),
        ({"kind": "prompts", "positive": [], "negative": ["x"]}, "positive must be a list of 1 to 16"),
        ({"kind": "prompts", "positive": ["x"], "negative": ["y" * 501]}, "at most 500 characters"),
        ({"kind": "direction", "name": "rome"}, "no saved direction 'rome' (saved: paris)"),
    ],
)
def test_a_bad_steer_is_one_line(change, needle):
    with pytest.raises(llmri.CaptureError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_steer({**GOOD, **change}, ENGINE)
    with pytest.raises(llmri.CaptureError, match="applies no steering"):
        check_steer(GOOD, SimpleNamespace(steerable=False))


def test_a_feature_steers_along_its_decoder_row():
    # "steer with this feature": the record's vector is the SAE's decoder row, unit length, at the layers asked
    import torch

    from llmri.readouts.sae import SAE
    from llmri.viewer.live.steering import steer_records

    w = torch.randn(32, 48, generator=torch.Generator().manual_seed(1))
    sae = SAE(W_enc=w, b_enc=torch.zeros(48), W_dec=w.T.contiguous() * 3, b_dec=torch.zeros(32), architecture="relu",
              name="r1", source_format="test", path="", layer=1, signal="resid")  # fmt: skip
    spec = {"kind": "feature", "layers": [0, 2], "scale": 5.0, "sae": "r1", "feature": 7}
    (rec,) = steer_records(spec, None, {}, "hf", [sae])
    row = (w.T[7] / w.T[7].norm()).numpy()
    assert rec.layers == (0, 2) and rec.scale == 5.0 and rec.signal == "resid"
    vec = rec.direction.array().reshape(-1, 32)
    for v in vec:
        np.testing.assert_allclose(v, row, rtol=1e-5, atol=1e-6)


def test_only_a_chat_answer_of_this_model_is_re_run(synthetic_model):
    chat = llmri.capture(synthetic_model, "Why?", chat=True, max_new_tokens=2)
    raw = llmri.capture(synthetic_model, "Why?", chat=False, max_new_tokens=2)
    with pytest.raises(llmri.CaptureError, match="only a chat answer"):
        rerun_request(raw, {}, synthetic_model.fingerprint)
    with pytest.raises(llmri.CaptureError, match="recorded on another model"):
        rerun_request(chat, {}, "0123456789abcdef")
    data = rerun_request(chat, {"settings": {"steer": GOOD}}, synthetic_model.fingerprint)
    assert data["messages"] == chat.meta["messages"] and data["settings"]["steer"] == GOOD
    assert data["settings"]["seed"] == chat.meta["generation"]["seed"]


def test_over_the_socket_a_steer_the_model_cannot_apply_is_one_error_line(tmp_path, synthetic_model):
    store = llmri.open_store(tmp_path / "live.zarr", create=True)
    live = LiveChat(ModelEngine(synthetic_model))  # the synthetic backend applies no interventions
    served = ServedApp(create_app(store, live=live))
    try:
        with served.connect() as ws:
            assert json.loads(ws.recv(timeout=10))["steerable"] is False
            for msg, needle in [
                ({"messages": QUESTION, "settings": {"steer": GOOD}}, "applies no steering"),
                ({"rerun": "s0/nope"}, "rerun: no such session"),
                ({"rerun": "nope"}, "rerun names a session as STORE/SESSION"),
                ({"rerun": ["s0", "x"]}, "rerun names a session as STORE/SESSION"),
            ]:
                ws.send(json.dumps({"type": "chat", **msg}))
                reply = json.loads(ws.recv(timeout=10))
                assert reply["type"] == "error" and needle in reply["message"], (msg, reply)
            assert live.run is None and not store.session_ids()
    finally:
        live.close()
        served.close()


def test_view_direction_flags_fail_in_one_line(tmp_path, capsys, synthetic_model):
    from llmri.cli import main as cli_main

    store = str(tmp_path / "new.zarr")
    assert cli_main(["view", store, "--no-browser", "--direction", str(tmp_path / "d.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--direction steers a local model: give --model too" in err and len(err.splitlines()) == 1, err
    with pytest.raises(llmri.CaptureError):  # a file that is no direction: one line, before any turn
        ModelEngine(synthetic_model, directions=[tmp_path / "nope.safetensors"])


# -- the bundled model over the real socket --------------------------------------------------------


def _turn(ws, msg: dict) -> tuple[dict, dict]:
    ws.send(json.dumps({"type": "chat", **msg}))
    turn = receive_turn(ws, timeout=300)
    errors = [m for m in turn["json"] if m["type"] == "error"]
    assert not errors and turn["done"]["status"] == "complete", (errors, turn["done"])
    return turn, next(m for m in turn["json"] if m["type"] == "started")


@pytest.mark.slow
def test_re_run_this_answer_steered(real_model, tmp_path):
    d = llmri.direction(real_model, ["I love Paris", "Paris is"], ["I love Rome", "Rome is"], layers=[10, 12])
    saved = d.save(tmp_path / "paris.safetensors")
    engine = ModelEngine(real_model, directions=[saved])
    assert engine.describe()["directions"] == ["paris"] and engine.describe()["steerable"] is True
    store = llmri.open_store(tmp_path / "live.zarr", create=True)
    live = LiveChat(engine)
    served = ServedApp(create_app(store, live=live))
    try:
        with served.connect() as ws:
            assert json.loads(ws.recv(timeout=10))["directions"] == ["paris"]
            _, first = _turn(ws, {"messages": QUESTION, "settings": {"max_new_tokens": 8}})
            key = first["session"]
            base = store.session(key.split("/")[1])
            runs = {}
            for name, steer in [
                ("zero", {"kind": "neuron", "layers": [12], "scale": 0, "neuron": 3}),
                ("neuron", {"kind": "neuron", "layers": [4, 12], "scale": 300, "neuron": 3}),
                ("saved", {"kind": "direction", "layers": [12], "scale": 40, "name": "paris"}),
                (
                    "prompts",
                    {
                        "kind": "prompts",
                        "layers": [12],
                        "scale": 40,
                        "positive": ["I love Paris"],
                        "negative": ["I love Rome"],
                    },
                ),  # fmt: skip
            ]:
                _, started = _turn(ws, {"rerun": key, "settings": {"steer": steer}})
                runs[name] = store.session(started["session"].split("/")[1])
            ws.send(json.dumps({"type": "chat", "rerun": "s0/nope", "settings": {}}))
            assert "rerun: no such session" in json.loads(ws.recv(timeout=10))["message"]
        for name, r in runs.items():
            assert r.meta["baseline"] == base.id and r.meta["messages"] == base.meta["messages"], name
            (rec,) = r.meta["interventions"]
            assert rec["kind"] == "steer" and rec["positions"] == "generated", name
        # scale 0: the same question, settings and seed give the same answer, bit for bit
        assert list(runs["zero"].tokens.ids) == list(base.tokens.ids)
        np.testing.assert_array_equal(runs["zero"].frames("resid"), base.frames("resid"))
        assert llmri.compare(runs["zero"], base).first_divergence is None
        for name in ("neuron", "saved", "prompts"):
            c = llmri.compare(runs[name], base)
            assert c.first_divergence is not None or (c.rel_l2["resid"] > 0).any(), name
    finally:
        live.close()
        served.close()
