"""Batched capture on the real model against batch-1 capture() of each prompt (the reference):
the same greedy tokens, each row stopping on its own, frames, norms, token statistics, lens and
attention within the stated tolerance; layers=; resume skips complete prompts."""

from __future__ import annotations

import numpy as np
import pytest

import llmri
from llmri.capture.precision import difference_tolerance
from llmri.study import capture_many, study_stats

pytestmark = pytest.mark.slow

#: clearly different lengths (chat template: ~30, ~45 and ~60 tokens); each row stops on its own
PROMPTS = [
    {"prompt": "Say hi.", "id": "short", "topic": "greeting"},
    {"prompt": "Write one sentence about a dragon who likes apples, pears and plums in the morning.", "id": "mid"},
    {
        "prompt": "List three facts about the Moon, the Sun and the planets of the solar system, with a short "
        "explanation of each one, for a child who is seven years old and loves space and rockets.",
        "id": "long",
    },
]
OPTS = {"max_new_tokens": 8, "chat": True, "lens": True, "attention": True}


def close_frames(a, b):
    """Stored frames of a batched and a batch-1 capture: within the storage rounding of both
    (difference_tolerance) plus float32 noise of a differently shaped matmul (1e-3 relative)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    tol = difference_tolerance("float16", a, b) + 1e-3 * np.maximum(np.abs(a), np.abs(b)) + 1e-3
    return np.abs(a - b) <= tol


@pytest.fixture(scope="module")
def study(real_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("study") / "s.zarr")
    report = capture_many(real_model, PROMPTS, store=path, batch_size=3, **OPTS)
    return path, report


def test_batched_equals_batch_one(real_model, study):
    path, report = study
    assert report.captured == 3 and report.skipped == 0
    store = llmri.open_store(path)
    by_id = {store.session(s).meta["study"]["id"]: store.session(s) for s in store.session_ids()}
    assert sorted(by_id) == ["long", "mid", "short"]
    for row in PROMPTS:
        s = by_id[row["id"]]
        ref = llmri.capture(real_model, row["prompt"], **OPTS)
        assert s.status == "complete"
        assert s.meta["study"]["metadata"] == {k: v for k, v in row.items() if k not in ("prompt", "id")}
        assert s.tokens.ids.tolist() == ref.tokens.ids.tolist()  # the same greedy tokens
        assert s.meta["stop_reason"] == ref.meta["stop_reason"]
        for sig in ref.signals:
            assert close_frames(s.frames(sig), ref.frames(sig)).all(), sig
            np.testing.assert_allclose(s.norms(sig), ref.norms(sig), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(s.tokens.logprob, ref.tokens.logprob, rtol=1e-3, atol=1e-3)
        lens, lref = s.lens(), ref.lens()
        np.testing.assert_allclose(lens.top_probs, lref.top_probs, atol=1e-3)
        sure = np.abs(np.diff(lref.top_probs, axis=-1)).min(-1) > 1e-3  # no near-tie in the top-k order
        assert (lens.top_ids == lref.top_ids)[sure].all()
        att, aref = s.attention(), ref.attention()
        np.testing.assert_allclose(att.top_weight, aref.top_weight, atol=1e-4)
        np.testing.assert_allclose(att.entropy, aref.entropy, atol=1e-3)


def test_resume_skips_complete_and_stats_stored(real_model, study):
    path, first = study
    again = capture_many(real_model, PROMPTS, store=path, batch_size=3, **OPTS)
    assert (again.captured, again.skipped) == (0, 3)
    assert len(llmri.open_store(path).session_ids()) == 3
    stored, recomputed = study_stats(path), study_stats(path, recompute=True)
    np.testing.assert_allclose(stored.mean, recomputed.mean, rtol=1e-9)
    assert stored.count.sum() == recomputed.count.sum() > 0


def test_layers_in_a_batch(real_model, tmp_path):
    path = str(tmp_path / "l.zarr")
    capture_many(real_model, PROMPTS[:2], store=path, batch_size=2, layers="0-2,-1", max_new_tokens=4, chat=True)
    store = llmri.open_store(path)
    for sid in store.session_ids():
        s = store.session(sid)
        ref = llmri.capture(real_model, s.meta["prompt"], max_new_tokens=4, chat=True)
        assert s.meta["layer_indices"] == [0, 1, 2, 29] and s.layers == [ref.layers[i] for i in (0, 1, 2, 29)]
        assert s.frames("resid").shape[1] == 4
        assert close_frames(s.frames("mlp"), ref.frames("mlp")[:, [0, 1, 2, 29]]).all()


def test_interventions_run_row_by_row_with_the_same_frames(real_model, tmp_path):
    # an intervention's positions are per prompt: the study captures those prompts one at a time
    vec = np.random.default_rng(0).standard_normal(576).astype(np.float32)
    opts = {"max_new_tokens": 3, "chat": True, "signals": "resid", "interventions": [llmri.steer(vec, [3, 4], 4.0)]}
    path = str(tmp_path / "i.zarr")
    capture_many(real_model, PROMPTS[:2], store=path, batch_size=2, **opts)
    store = llmri.open_store(path)
    for sid in store.session_ids():
        s = store.session(sid)
        ref = llmri.capture(real_model, s.meta["prompt"], **opts)
        plain = llmri.capture(real_model, s.meta["prompt"], **{**opts, "interventions": ()})
        assert len(s.meta["interventions"]) == 1
        assert s.tokens.ids.tolist() == ref.tokens.ids.tolist()
        np.testing.assert_array_equal(s.frames("resid"), ref.frames("resid"))
        assert not np.array_equal(s.frames("resid"), plain.frames("resid"))  # the steer changed the run


def test_rows_leave_the_batch_at_different_steps(real_model, tmp_path):
    # one batch whose rows end three ways at three steps: a stop string ("!"), EOS, max_new_tokens;
    # each row's tokens, stop reason and frames equal its batch-1 capture (rows that left are not stepped)
    prompts = ["Say hi.", "What is 2+2? Answer with one number.", "Write one sentence about a dragon who likes apples."]
    opts = {"max_new_tokens": 24, "chat": True, "stop": ["!"], "signals": ["resid", "mlp"]}
    path = str(tmp_path / "eos.zarr")
    capture_many(real_model, prompts, store=path, batch_size=3, **opts)
    store = llmri.open_store(path)
    got = {store.session(s).meta["prompt"]: store.session(s) for s in store.session_ids()}
    reasons, lengths = set(), set()
    for p in prompts:
        s, ref = got[p], llmri.capture(real_model, p, **opts)
        assert s.status == "complete" and s.meta["stop_reason"] == ref.meta["stop_reason"]
        assert s.tokens.ids.tolist() == ref.tokens.ids.tolist() and s.text == ref.text
        for sig in opts["signals"]:
            assert close_frames(s.frames(sig), ref.frames(sig)).all(), (p, sig)
        reasons.add(s.meta["stop_reason"])
        lengths.add(len(s.tokens.ids) - s.tokens.role.count("prompt"))
    assert len(reasons) == 3 and len(lengths) == 3, (reasons, lengths)
