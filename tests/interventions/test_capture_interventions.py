"""Interventions in a capture: applied by the hf backend inside each step, refused elsewhere, recorded
exactly in the session. Fast tests on a tiny random Llama; the bundled model's are in
test_interventions_reference.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import llmri
from helpers import tiny_model
from llmri.cli import main
from llmri.interventions import from_meta

D = 32  # the tiny model's width; 3 layers
PROMPT = "hello there"
OPTS = {"max_new_tokens": 4, "reducer": "neurons", "frame_dtype": "float32", "backend": "hf"}


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(0)


def _hooks(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _vec(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(D).astype(np.float32)


def _one_line(fn, match: str) -> None:
    with pytest.raises(llmri.CaptureError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def _same(a, b) -> None:
    assert list(a.tokens.ids) == list(b.tokens.ids)
    for s in a.signals:
        assert np.array_equal(a.frames(s), b.frames(s)), s


@pytest.mark.parametrize(
    ("interventions", "match"),
    [
        ([llmri.steer(np.ones(D + 1), 0)], f"the direction has width {D + 1}, the model's d_model is {D}"),
        ([llmri.steer(np.ones(D), 3)], "layer 3 is out of range: the model has 3 layers"),
        ([llmri.ablate([0, 5], "mlp")], "layer 5 is out of range"),
        ([llmri.ablate(0, "resid", neurons=[D])], f"neuron {D} is out of range"),
    ],
)
def test_what_needs_the_model_fails_before_generation(tiny, interventions, match):
    before = _hooks(tiny.model)
    _one_line(lambda: llmri.stream(tiny, PROMPT, interventions=interventions, **OPTS), match)
    assert _hooks(tiny.model) == before


# transformer-lens and nnsight apply them: test_backend_interventions.py; llama.cpp: test_llamacpp_steer.py
def test_the_synthetic_backend_refuses_interventions_naming_the_backends_that_can(synthetic_model):
    _one_line(
        lambda: llmri.stream(synthetic_model, "hi", interventions=[llmri.ablate(0, "mlp")]),
        r"backend 'synthetic' cannot apply interventions: use backend='hf' \(or 'transformer-lens', 'nnsight'\)",
    )


def test_nothing_changed_gives_the_baseline_exactly_and_leaves_no_hook(tiny):
    before = _hooks(tiny.model)
    base = llmri.capture(tiny, PROMPT, **OPTS)
    for interventions in (
        [],
        [llmri.steer(_vec(), [0, 2], scale=0.0, positions="all")],
        [llmri.ablate(1, "mlp", neurons=[])],
    ):
        _same(llmri.capture(tiny, PROMPT, interventions=interventions, **OPTS), base)
    changed = llmri.capture(tiny, PROMPT, interventions=[llmri.steer(_vec(), 1, scale=5.0, positions="all")], **OPTS)
    assert not np.array_equal(changed.frames("resid"), base.frames("resid"))
    assert _hooks(tiny.model) == before
    _same(llmri.capture(tiny, PROMPT, **OPTS), base)  # a plain capture after an intervened one


def test_a_failing_forward_leaves_no_hook(tiny):
    before = _hooks(tiny.model)

    def boom(*_a):
        raise RuntimeError("boom")

    h = tiny.model.model.layers[2].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            llmri.capture(tiny, PROMPT, interventions=[llmri.steer(_vec(), 1)], **OPTS)
    finally:
        h.remove()
    assert _hooks(tiny.model) == before


def test_steering_adds_the_vector_at_exactly_the_positions_named(tiny):
    v, layer = _vec(1), 1
    base = llmri.capture(tiny, PROMPT, **OPTS)
    n_prompt = base.tokens.role.count("prompt")
    # the last prompt position: everything before it as in the baseline, the vector added there
    s = llmri.capture(tiny, PROMPT, interventions=[llmri.steer(v, layer, scale=3.0, positions="last")], **OPTS)
    r, r0 = s.frames("resid").reshape(len(s), 3, -1)[:, :, :D], base.frames("resid").reshape(len(s), 3, -1)[:, :, :D]
    assert np.array_equal(r[: n_prompt - 1], r0[: n_prompt - 1])
    assert np.array_equal(r[n_prompt - 1, :layer], r0[n_prompt - 1, :layer])
    np.testing.assert_allclose(r[n_prompt - 1, layer] - r0[n_prompt - 1, layer], 3.0 * v, atol=1e-5)
    # explicit indices, one in the prompt and one generated: only those two positions at that layer
    p = [1, n_prompt + 1]
    s = llmri.capture(tiny, PROMPT, interventions=[llmri.steer(v, layer, positions=p)], **OPTS)
    r = s.frames("resid").reshape(len(s), 3, -1)[:, :, :D]
    assert np.array_equal(r[:1], r0[:1])
    np.testing.assert_allclose(r[1, layer] - r0[1, layer], v, atol=1e-5)


def test_ablating_a_whole_mlp_leaves_the_attention_alone_in_the_residual_step(tiny):
    s = llmri.capture(tiny, PROMPT, interventions=[llmri.ablate(2, "mlp")], **OPTS)
    r, a, m = (s.frames(x) for x in ("resid", "attn", "mlp"))
    assert not m[:, 2].any()
    np.testing.assert_allclose(r[:, 2] - r[:, 1], a[:, 2], atol=1e-5)


def test_mean_ablation_sets_the_calibration_mean(tiny):
    s = llmri.capture(tiny, PROMPT, interventions=[llmri.ablate(1, "resid", neurons=[3, 4], value="mean")], **OPTS)
    r = s.frames("resid").reshape(len(s), 3, -1)
    assert np.ptp(r[:, 1, 3]) == 0 and np.ptp(r[:, 1, 4]) == 0  # one value at every position
    assert r[0, 1, 3] != 0


def test_mean_ablation_records_the_means_it_used(tiny):
    # a calibration text of the user's: the record holds the means themselves, so re-running it with
    # the default text (or none at all) sets the same values: the run rebuilds from its record alone
    text = "Numbers and letters: 1 2 3 a b c. Once upon a time there was a small model."
    rec = llmri.ablate(1, "resid", neurons=[3, 4], value="mean")
    s = llmri.capture(tiny, PROMPT, interventions=[rec], calibration=text, **OPTS)
    (stored,) = from_meta(s.meta)
    assert stored.mean is not None and stored.mean.shape == (1, D)
    r = s.frames("resid").reshape(len(s), 3, -1)
    np.testing.assert_array_equal(r[:, 1, 3], stored.mean.row(0)[3])  # the value set is the recorded mean
    again = llmri.capture(tiny, PROMPT, interventions=[stored], **OPTS)
    np.testing.assert_array_equal(again.frames("resid").reshape(len(s), 3, -1)[:, 1, 3:5], r[:, 1, 3:5])
    assert from_meta(again.meta) == (stored,)
    other = llmri.capture(tiny, PROMPT, interventions=[rec], **OPTS)  # the default text: other means
    assert not np.array_equal(other.frames("resid").reshape(len(s), 3, -1)[:, 1, 3], r[:, 1, 3])
    _one_line(lambda: llmri.interventions.Ablate((1,), "resid", value=0.0, mean=np.zeros((1, D))), "go with value")
    _one_line(
        lambda: llmri.capture(
            tiny,
            PROMPT,
            interventions=[llmri.interventions.Ablate((1,), "resid", value="mean", mean=np.zeros((1, D + 1)))],
            **OPTS,
        ),
        "width",
    )


def test_directional_ablation_removes_the_component(tiny):
    d = _vec(2)
    s = llmri.capture(tiny, PROMPT, interventions=[llmri.ablate(0, "resid", direction=d)], **OPTS)
    r = s.frames("resid").reshape(len(s), 3, -1)[:, 0, :D]
    np.testing.assert_allclose(r @ (d / np.linalg.norm(d)), 0, atol=1e-5)


def test_the_session_records_its_interventions_and_reruns_from_them(tiny, tmp_path, capsys):
    recs = [llmri.steer(_vec(3), range(0, 2), scale=2.0), llmri.ablate(2, "attn", neurons=[1, 5], positions="prompt")]
    path = tmp_path / "s.zarr"
    st = llmri.stream(tiny, PROMPT, store=path, interventions=recs, **OPTS)
    list(st)
    stored = llmri.open_store(path).session(st.session_id)
    assert from_meta(stored.meta) == tuple(recs)
    assert json.loads(json.dumps(stored.meta["interventions"])) == [r.to_dict() for r in recs]
    again = llmri.capture(tiny, PROMPT, interventions=from_meta(stored.meta), **OPTS)
    _same(again, stored)
    assert main(["info", str(path), st.session_id]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("intervention")]
    assert lines == [f"intervention {r.describe()}" for r in recs]
    assert "steer resid layers 0,1 positions generated scale 2" in lines[0]


def test_a_signal_not_recorded_can_still_be_ablated(tiny):
    base = llmri.capture(tiny, PROMPT, **{**OPTS, "signals": "resid"})
    s = llmri.capture(tiny, PROMPT, interventions=[llmri.ablate(1, "mlp")], **{**OPTS, "signals": "resid"})
    assert s.signals == ["resid"] and not np.array_equal(s.frames("resid")[:, 1], base.frames("resid")[:, 1])
    assert np.array_equal(s.frames("resid")[:, 0], base.frames("resid")[:, 0])


def test_steering_a_tensor_on_the_models_dtype(tiny):
    t = torch.from_numpy(_vec(4))
    s = llmri.capture(tiny, PROMPT, interventions=[llmri.steer(t, 0, norm="match", scale=0.5)], **OPTS)
    assert s.meta["interventions"][0]["norm"] == "match" and len(s) > 0


def test_live_chat_turns_apply_the_engines_interventions(tiny, tmp_path, synthetic_model):
    from llmri.viewer.live import ModelEngine

    recs = [llmri.steer(_vec(5), 1, scale=4.0, positions="all")]
    engine = ModelEngine(tiny, "hf", frame_dtype="float32", interventions=recs)
    assert engine.options.interventions == tuple(recs)
    store = llmri.open_store(tmp_path / "live.zarr", create=True)
    turn = {"max_new_tokens": 2, "temperature": 0.0, "top_p": 1.0, "seed": 0, "signals": None, "reducer": "neurons"}
    stream = engine.open([{"role": "user", "content": "hi"}], turn, store, {})
    list(stream)
    assert from_meta(stream.meta) == tuple(recs)
    with pytest.raises(llmri.CaptureError, match="applies no interventions"):
        ModelEngine(synthetic_model, interventions=recs)
