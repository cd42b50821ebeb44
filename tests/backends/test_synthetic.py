"""The synthetic backend: the fast fake that store and viewer tests lean on."""

from __future__ import annotations

import numpy as np

import llmri


def test_synthetic_capture_shapes(synthetic_model):
    s = llmri.capture(synthetic_model, "hi", max_new_tokens=10)
    assert s.status == "complete"
    assert len(s) == 2 + 10
    assert s.frames("resid").shape == (12, 6, 16, 16)
    assert s.frames("resid").dtype == np.float16
    assert s.tokens.role[:2] == ["prompt", "prompt"]
    assert s.text == "The sky is"
    assert not np.array_equal(s.frames("resid")[3], s.frames("resid")[4])


def test_synthetic_stops_at_eos(synthetic_model):
    s = llmri.capture(synthetic_model, "q", max_new_tokens=500)
    assert s.meta["stop_reason"] == "eos"
    assert s.tokens.ids[-1] == 256
    assert s.text.endswith("long ones.")  # EOS excluded from the text
