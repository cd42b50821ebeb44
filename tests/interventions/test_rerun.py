"""llmri.rerun on the bundled model: the paired session from the same prompt, settings and seed;
with the session's own records it reproduces the frames exactly, and it names its baseline."""

from __future__ import annotations

import numpy as np
import pytest

import llmri
from llmri._errors import CaptureError
from llmri.cli import main

pytestmark = pytest.mark.slow

OPTS = {"max_new_tokens": 4, "reducer": "neurons", "frame_dtype": "float32", "lens": True, "ignore_eos": True}


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.tokens.ids, b.tokens.ids)
    for sig in a.signals:
        np.testing.assert_array_equal(a.frames(sig), b.frames(sig))
    la, lb = a.lens(), b.lens()
    np.testing.assert_array_equal(la.top_ids, lb.top_ids)
    np.testing.assert_array_equal(la.top_probs, lb.top_probs)


def test_rerun_reproduces_and_pairs(real_model, tmp_path, capsys):
    store = tmp_path / "runs.zarr"
    d = np.zeros(576, dtype=np.float32)
    d[7] = 40.0
    base = llmri.capture(
        real_model, "The capital of France is", store=store, seed=3, temperature=0.7,
        interventions=[llmri.steer(d, layers=10, positions="all")], **OPTS,
    )  # fmt: skip
    again = llmri.rerun(base, model=real_model, store=store)
    assert again.meta["baseline"] == base.meta["id"] and again.meta["id"] != base.meta["id"]
    assert again.meta["interventions"] == base.meta["interventions"]
    assert again.meta["generation"] == base.meta["generation"] and again.meta["lens"] == base.meta["lens"]
    _same(again, base)
    plain = llmri.rerun(base, [], model=real_model, store=store)
    assert "interventions" not in plain.meta and plain.meta["baseline"] == base.meta["id"]
    assert not np.array_equal(plain.frames("resid"), base.frames("resid"))
    # below the steered layer the two runs agree at the prompt's positions
    n = base.tokens.role.count("prompt")
    np.testing.assert_array_equal(plain.frames("resid")[:n, :10], base.frames("resid")[:n, :10])
    assert main(["info", str(store), plain.meta["id"]]) == 0
    assert f"baseline     {base.meta['id']}" in capsys.readouterr().out


def test_rerun_refuses_another_model(real_model):
    from helpers import tiny_model

    base = llmri.capture(tiny_model(0), "hi", max_new_tokens=1)
    with pytest.raises(CaptureError, match="captured on another model"):
        llmri.rerun(base, model=real_model)
    with pytest.raises(CaptureError, match="records no model path"):
        llmri.rerun(base)
