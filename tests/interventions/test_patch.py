"""Patching on the bundled model: every position of resid at layer l from B into A's prompt
reproduces B's activations above l and B's next token (HF's own forward on B is the reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmri
from llmri._errors import CaptureError

pytestmark = pytest.mark.slow

A, B = "The capital of France is", "The capital of Italy is"
OPTS = {"max_new_tokens": 1, "reducer": "neurons", "frame_dtype": "float32", "chat": False, "backend": "hf"}
D = 576


def _vectors(s, signal="resid"):
    f = s.frames(signal)
    return f.reshape(f.shape[0], f.shape[1], -1)[:, :, :D]


@pytest.fixture(scope="module")
def runs(real_model):
    ids = [real_model.tokenizer(t)["input_ids"] for t in (A, B)]
    assert len(ids[0]) == len(ids[1])
    return llmri.capture(real_model, A, **OPTS), llmri.capture(real_model, B, **OPTS), len(ids[0])


@pytest.mark.parametrize("source_kind", ["prompt", "session"])
def test_patching_every_position_of_resid_at_l_gives_bs_run_above_l(real_model, runs, source_kind):
    a, b, n = runs
    layer = 6
    src = B if source_kind == "prompt" else b
    p = llmri.capture(real_model, A, interventions=[llmri.patch(src, layers=layer)], **OPTS)
    pv, av, bv = _vectors(p)[:n], _vectors(a)[:n], _vectors(b)[:n]
    np.testing.assert_allclose(pv[:, layer:], bv[:, layer:], rtol=1e-4, atol=1e-3)
    assert np.abs(pv[:, :layer] - av[:, :layer]).max() == 0  # below l: A's own
    assert not np.allclose(av[:, layer + 1 :], bv[:, layer + 1 :], atol=1e-2)  # the patch mattered
    # B's next token, from HF's own forward on B
    with torch.no_grad():
        ref = real_model.model(torch.tensor([real_model.tokenizer(B)["input_ids"]])).logits[0, -1].argmax()
    assert p.tokens.ids[n] == int(ref) == b.tokens.ids[n] != a.tokens.ids[n]
    rec = p.meta["interventions"][0]
    assert rec["kind"] == "patch" and rec["layers"] == [layer]
    again = llmri.capture(real_model, A, interventions=llmri.interventions.from_meta(p.meta), **OPTS)
    np.testing.assert_array_equal(again.frames("resid"), p.frames("resid"))


def test_bad_patches_are_one_line(real_model, runs):
    a, _, n = runs
    with pytest.raises(CaptureError, match="needs full vectors"):
        llmri.patch(llmri.capture(real_model, B, max_new_tokens=0), layers=3)
    with pytest.raises(CaptureError, match="past the source session"):
        llmri.patch(a, layers=3, positions=[n + 5])
    with pytest.raises(CaptureError, match="past the source"):
        llmri.capture(
            real_model, A + " a very long prompt indeed", interventions=[llmri.patch("Hi", 2, positions=[4])], **OPTS
        )
