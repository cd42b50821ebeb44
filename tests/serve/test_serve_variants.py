"""Steered variants as model names (``MODEL+NAME``, ``llmri serve --variant``) and SAE features in every
session (``--sae``), in-process on a tiny random model: each variant's request runs with its
intervention, token for token what ``llmri.capture`` gives with the same record, and says so in its
session; a malformed ``--variant`` is one line before the server starts."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import llmri  # noqa: E402
from llmri.interventions import from_meta  # noqa: E402

V = np.random.default_rng(0).standard_normal(32).astype(np.float32)
REC = llmri.steer(V, [1], scale=20.0)


@pytest.fixture(scope="module")
def tiny():
    from helpers import tiny_model

    return tiny_model()


@pytest.fixture
def app(tiny, tmp_path):
    """A TestClient of a server with the tiny model as ``tiny`` and ``tiny+up@1`` (``REC``)."""
    from starlette.testclient import TestClient

    from llmri.readouts.sae import SAE
    from llmri.serve import ModelRegistry, ServedModel, create_serve_app, steered
    from llmri.viewer.live import ModelEngine

    w = torch.randn(32, 48, generator=torch.Generator().manual_seed(0)) / 32**0.5
    sae = SAE(W_enc=w, b_enc=torch.zeros(48), W_dec=w.T.contiguous(), b_dec=torch.zeros(32), architecture="relu",
              name="r1", source_format="test", path="", layer=1, signal="resid")  # fmt: skip
    registry = ModelRegistry()
    base = registry.add(ServedModel("tiny", ModelEngine(tiny, saes=[sae], sae_k=4)), aliases=("default",))
    registry.add(steered(base, "up@1", [REC], "v.npy@1:20"))
    store = llmri.open_store(tmp_path / "s.zarr", create=True)
    gate = create_serve_app(registry, store)
    with TestClient(gate, base_url="http://127.0.0.1:8000") as c:
        c.store = store
        yield c
    gate.app.state.serve.close()


def generated_ids(s) -> list[int]:
    return [int(i) for i, r in zip(s.tokens.ids, s.tokens.role, strict=True) if r == "generated"]


def ask(c, model: str) -> tuple[str, object]:
    body = {"model": model, "prompt": "abc", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    r = c.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"], c.store.session(r.headers["x-llmri-session"].split("/")[1])


def test_a_variant_is_listed_steers_and_is_recorded(app, tiny):
    cards = {m["id"]: m for m in app.get("/v1/models").json()["data"]}
    assert list(cards) == ["tiny", "tiny+up@1"] and cards["tiny+up@1"]["parent"] == "tiny"
    base_text, base = ask(app, "tiny")
    text, s = ask(app, "tiny+up@1")
    assert generated_ids(s) != generated_ids(base)
    ref = llmri.capture(tiny, "abc", chat=False, max_new_tokens=8, temperature=0, ignore_eos=True, interventions=[REC])
    assert generated_ids(s) == generated_ids(ref) and text == ref.text
    assert from_meta(s.meta) == (REC,) and from_meta(base.meta) == ()
    assert s.meta["serve"]["model"] == "tiny+up@1"
    assert s.meta["serve"]["variant"] == {"name": "up@1", "base": "tiny", "spec": "v.npy@1:20"}
    assert "variant" not in base.meta["serve"]
    for one in (s, base):  # the engine's SAE: every session, the variant's included
        assert one.sae("r1").ids.shape == (len(one), 4)
    # the base again after the variant: the steering hooks were removed
    assert generated_ids(ask(app, "default")[1]) == generated_ids(base)


def test_an_unknown_variant_is_model_not_found(app):
    r = app.post("/v1/chat/completions", json={"model": "tiny+down@1", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "tiny+up@1" in r.json()["error"]["message"]


def test_a_variant_is_checked_against_the_model(tiny):
    from llmri.backends.synthetic import SyntheticModel
    from llmri.serve import ServedModel, steered
    from llmri.viewer.live import ModelEngine

    base = ServedModel("tiny", ModelEngine(tiny))
    with pytest.raises(llmri.CaptureError, match="variant 'x': steer: layer 7 is out of range"):
        steered(base, "x", [llmri.steer(V, [7])])
    with pytest.raises(llmri.CaptureError, match="the direction has width 64, the model's d_model is 32"):
        steered(base, "x", [llmri.steer(np.ones(64, np.float32), [1])])
    with pytest.raises(llmri.CaptureError, match="variant 'x': the synthetic backend applies no interventions"):
        steered(ServedModel("syn", ModelEngine(SyntheticModel())), "x", [REC])


@pytest.mark.parametrize(
    ("flag", "match"),
    [
        ("v.npy@1", "--variant takes NAME=FILE@LAYERS"),
        ("up=", "--variant takes NAME=FILE@LAYERS"),
        ("=v.npy@1", "NAME must be"),
        ("a b=v.npy@1", "NAME must be"),
        ("up=v.npy", "--variant takes FILE@LAYERS"),
        ("up=missing.npy@1", "--variant: cannot read missing.npy"),
        ("up=v.npy@1:big", "--variant: the scale must be a number"),
        ("up=v.npy@x", "layers must look like"),
    ],
)
def test_a_malformed_variant_is_one_line(flag, match, tmp_path, monkeypatch):
    from llmri.commands.serve import parse_variant

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "v.npy", V)
    with pytest.raises(llmri.CaptureError, match=match) as info:
        parse_variant(flag)
    assert "\n" not in str(info.value)


def test_the_cli_refuses_a_bad_variant_before_the_server_starts(tmp_path, capsys):
    from llmri.cli import main

    np.save(tmp_path / "v.npy", V)
    out = tmp_path / "x.zarr"
    for bad, match in [
        ("honest", "--variant takes NAME=FILE@LAYERS[:SCALE], got 'honest'"),
        (f"a={tmp_path / 'nope.gguf'}@4:2", "nope.gguf"),
    ]:
        assert main(["serve", "-o", str(out), "--variant", bad]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err
    twice = f"a={tmp_path / 'v.npy'}@1"
    assert main(["serve", "-o", str(out), "--variant", twice, "--variant", twice]) == 1
    assert "the name 'a' is given twice" in capsys.readouterr().err
    assert main(["serve", "-o", str(out), "--sae-k", "3"]) == 1
    assert "--sae-k and --sae-labels go with --sae PATH" in capsys.readouterr().err
    assert not out.exists()  # nothing created, no model loaded


def test_without_a_seed_each_request_samples_anew_and_records_its_seed(app):
    # OpenAI's API samples afresh without a seed (an app's "regenerate"); the session records the seed
    # drawn, and sending that seed back reproduces the answer token for token
    body = {"model": "tiny", "prompt": "abc", "max_tokens": 12, "temperature": 1.5, "ignore_eos": True}
    sessions = []
    for _ in range(3):
        r = app.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        sessions.append(app.store.session(r.headers["x-llmri-session"].split("/")[1]))
    seeds = [s.meta["generation"]["seed"] for s in sessions]
    assert len(set(seeds)) == 3 and all(isinstance(x, int) and 0 <= x < 2**63 for x in seeds)
    assert len({tuple(generated_ids(s)) for s in sessions}) > 1  # 12 tokens at temperature 1.5 differ
    r = app.post("/v1/completions", json={**body, "seed": seeds[0]})
    again = app.store.session(r.headers["x-llmri-session"].split("/")[1])
    assert again.meta["generation"]["seed"] == seeds[0] and generated_ids(again) == generated_ids(sessions[0])
