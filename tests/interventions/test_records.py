"""Intervention records: checked when built (one line), serialised with the vector itself, exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

import llmri
from llmri.interventions import Ablate, Steer, Vector, as_records, from_dict, from_meta, selected
from llmri.settings import CaptureSettings


def _one_line(fn, match: str) -> str:
    with pytest.raises(llmri.CaptureError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_layers_and_positions_take_each_form():
    v = np.arange(8, dtype=np.float32)
    assert llmri.steer(v, 3).layers == (3,)
    assert llmri.steer(v, range(2, 5)).layers == (2, 3, 4)
    assert llmri.steer(v, [5, 1]).layers == (5, 1)  # the order given: rows of a per-layer direction follow it
    assert llmri.steer(v, 0, positions="all").positions == "all"
    assert llmri.steer(v, 0, positions=[4, 2, 9]).positions == (2, 4, 9)
    assert llmri.steer(v, 0, positions=7).positions == (7,)
    assert llmri.ablate(1, "mlp", neurons=[3, 1]).neurons == (1, 3)
    assert llmri.ablate(1, "mlp", neurons=[]).is_noop
    s = llmri.steer(v, [1, 2], scale=2)
    assert isinstance(s, Steer) and s.scale == 2.0 and isinstance(s.scale, float)


def test_a_torch_tensor_is_a_direction():
    torch = pytest.importorskip("torch")
    t = torch.linspace(-1, 1, 16, dtype=torch.float64)
    assert np.array_equal(llmri.steer(t, 0).direction.array(), t.numpy().astype(np.float32))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda v: llmri.steer(v, 0, positions="middle"), "unknown positions 'middle'"),
        (lambda v: llmri.steer(v, 0, positions=[-1]), "positions must be whole numbers >= 0"),
        (lambda v: llmri.steer(v, 0, scale=float("nan")), "scale must be a finite number"),
        (lambda v: llmri.steer(v, 0, scale="big"), "scale must be a finite number"),
        (lambda v: llmri.steer(v, 0, scale=True), "scale must be a finite number"),
        (lambda v: llmri.steer(v, 0, signal="logits"), "unknown signal 'logits'"),
        (lambda v: llmri.steer(v, -1), "layers count from 0"),
        (lambda v: llmri.steer(v, [1, 1]), "listed twice"),
        (lambda v: llmri.steer(v, []), "one or more whole numbers"),
        (lambda v: llmri.steer(v, "3"), "layers must be an int"),
        (lambda v: llmri.steer(np.stack([v, v, v]), [0, 1]), "needs 2 rows"),
        (lambda v: llmri.steer(np.zeros((2, 2, 2)), 0), r"\[d_model\] or \[layers, d_model\]"),
        (lambda v: llmri.steer([1.0, float("inf")], 0), "NaN or infinite"),
        (lambda v: llmri.steer(v * 0, 0, norm="match"), "not zero"),
        (lambda v: llmri.steer(v, 0, norm="unit"), "norm must be None or 'match'"),
        (lambda v: llmri.ablate(0, "mlp", neurons=[1], direction=v), "neurons or a direction"),
        (lambda v: llmri.ablate(0, "mlp", value="median"), "value"),
        (lambda v: llmri.ablate(0, "mlp", neurons=[-2]), "neurons must be distinct"),
    ],
)
def test_what_needs_no_model_fails_when_built_with_one_line(make, match):
    _one_line(lambda: make(np.ones(8, dtype=np.float32)), match)


def _records():
    rng = np.random.default_rng(0)
    d = rng.standard_normal(8).astype(np.float32)
    return [
        llmri.steer(d, range(1, 4), scale=-2.5, positions="generated"),
        llmri.steer(rng.standard_normal((2, 8)), [0, 3], signal="attn", positions=[0, 5], norm="match"),
        llmri.ablate([2], "mlp"),
        llmri.ablate(1, "resid", neurons=[0, 7], value="mean", positions="prompt"),
        llmri.ablate(0, "attn", direction=d, positions="last"),
        llmri.ablate(0, "attn", neurons=[]),
    ]


def test_records_round_trip_exactly_through_json():
    for r in _records():
        d = r.to_dict()
        back = from_dict(json.loads(json.dumps(d)))
        assert back == r and type(back) is type(r)
        assert back.to_dict() == d
        if r.direction is not None:
            assert back.direction.array().tobytes() == r.direction.array().tobytes()


def test_a_vector_may_be_stored_as_a_list():
    v = np.array([0.1, -3.25, 1e-8], dtype=np.float32)
    d = llmri.steer(v, 0).to_dict()
    d["direction"] = {"values": v.tolist()}
    assert from_dict(d).direction == Vector.of(v)
    d["direction"] = {"dtype": "float32", "shape": [4], "base64": Vector.of(v).to_dict()["base64"]}
    _one_line(lambda: from_dict(d), "does not match its 12 bytes")
    _one_line(lambda: from_dict({"kind": "probe"}), "unknown intervention kind 'probe'")


def test_settings_hold_the_records_as_a_tuple_and_write_them_json_safe():
    recs = _records()
    s = CaptureSettings(interventions=recs)
    assert s.interventions == tuple(recs)
    assert CaptureSettings(interventions=[r.to_dict() for r in recs]).interventions == tuple(recs)
    out = json.loads(json.dumps(s.to_dict()))
    assert from_meta(out) == tuple(recs)
    assert s.changed() == {"interventions": tuple(recs)}
    _one_line(lambda: CaptureSettings(interventions=["steer"]), "must be llmri.steer")
    _one_line(lambda: CaptureSettings(interventions="steer"), "must be a list")
    assert as_records(None) == () and as_records(recs[0]) == (recs[0],)


def test_each_record_describes_itself_in_one_line():
    for r in _records():
        text = r.describe()
        assert "\n" not in text and text.startswith(r.kind) and r.signal in text
    assert "layers 1-3" in _records()[0].describe() and "scale -2.5" in _records()[0].describe()
    assert isinstance(_records()[2], Ablate) and "all neurons to 0" in _records()[2].describe()


@pytest.mark.parametrize(
    ("positions", "start", "n", "want"),
    [
        ("all", 0, 5, slice(0, 5)),
        ("prompt", 0, 5, slice(0, 5)),
        ("generated", 0, 5, None),
        ("generated", 5, 1, slice(0, 1)),
        ("prompt", 5, 1, None),
        ("last", 0, 5, slice(4, 5)),
        ("last", 5, 1, None),
        ((1, 3, 6), 0, 5, [1, 3]),
        ((1, 3, 6), 6, 1, [0]),
        ((1, 3), 6, 1, None),
    ],
)
def test_positions_are_absolute_across_steps(positions, start, n, want):
    # a prompt of 5 positions: the prefill is start 0, n 5; each decode step one position
    assert selected(positions, start, n, n_prompt=5) == want


def test_a_plan_says_which_sites_a_step_touches():
    """What a backend that pays per edited site (nnsight) asks before each step."""
    import llmri
    from llmri.interventions import Patch, Plan

    v = np.ones(4, dtype=np.float32)
    patched = Patch(layers=(2,), signal="resid", positions=(1,), values=np.ones((1, 4), np.float32), at=(1,))
    plan = Plan(
        [llmri.steer(v, 0, positions="prompt"), llmri.ablate(1, "mlp", positions=[6]), patched],
        n_layers=3, d_model=4, n_prompt=5,
    )  # fmt: skip
    assert plan.touches("resid", 0, 0, 5) and not plan.touches("resid", 0, 5, 1)
    assert not plan.touches("mlp", 1, 0, 5) and not plan.touches("mlp", 1, 5, 1) and plan.touches("mlp", 1, 6, 1)
    assert plan.touches("resid", 2, 0, 5) and not plan.touches("resid", 2, 5, 1)
    assert not plan.touches("attn", 0, 0, 5)  # no edit there at all
