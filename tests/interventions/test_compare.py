"""llmri.compare on the bundled model: a steered run against its baseline, checked against the
tokens and full vectors each session holds (numpy on the stored float32 vectors)."""

from __future__ import annotations

import numpy as np
import pytest

import llmri

pytestmark = pytest.mark.slow

OPTS = {"max_new_tokens": 6, "reducer": "neurons", "frame_dtype": "float32", "lens": True, "ignore_eos": True}


def test_a_steered_run_differs_from_its_layer_on(real_model):
    base = llmri.capture(real_model, "The capital of France is", **OPTS)
    d = np.zeros(576, dtype=np.float32)
    d[100] = 200.0
    steered = llmri.rerun(base, [llmri.steer(d, layers=12, positions="all")], model=real_model)
    c = llmri.compare(base, steered)
    n = base.tokens.role.count("prompt")
    cos = c.cosine["resid"]
    assert cos.shape == (len(base), 30)
    assert (cos[:n, :12] == 1.0).all() and (c.rel_l2["resid"][:n, :12] == 0.0).all()  # below: equal
    assert (cos[:n, 12:] < 1.0).all() and (c.rel_l2["resid"][:n, 12:] > 0).all()  # from the steered layer on: moved
    fa = base.frames("resid").reshape(len(base), 30, -1)[:n, 12]
    fb = steered.frames("resid").reshape(len(base), 30, -1)[:n, 12]
    ref = (fa * fb).sum(-1) / (np.linalg.norm(fa, axis=-1) * np.linalg.norm(fb, axis=-1))
    np.testing.assert_allclose(cos[:n, 12], ref, rtol=1e-6)
    diff = [i for i, (x, y) in enumerate(zip(base.tokens.ids, steered.tokens.ids, strict=False)) if x != y]
    assert c.first_divergence == (diff[0] if diff else None)
    assert c.lens_changed is not None and c.lens_changed.shape == (len(base), 30)
    assert not c.lens_changed[:n, :12].any()
    assert llmri.compare(base, llmri.rerun(base, model=real_model)).first_divergence is None
    x = c.to_xarray()
    assert x["resid_cosine"].dims == ("position", "layer")
