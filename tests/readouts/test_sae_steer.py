"""Steering by a feature: ``SAE.direction(feature)`` (its decoder row) is a vector of the model's
width that ``llmri.steer`` takes; steering with it raises that feature at the SAE's read."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import llmri  # noqa: E402
from llmri import SAEError  # noqa: E402


@pytest.mark.slow
def test_steering_with_a_features_direction_raises_that_feature(real_model) -> None:
    from llmri.capture.demosae import bundled_sae

    sae = bundled_sae(real_model)  # resid 15
    prompt = "Once upon a time, a little fox lived in a quiet forest."
    base = llmri.capture(real_model, prompt, saes=[sae], sae_k=8, max_new_tokens=6)
    feature = int(np.argmin(np.bincount(base.sae(sae.name).ids.ravel(), minlength=sae.d_sae)))  # a quiet one
    d = sae.direction(feature)
    assert d.shape == (576,) and float(d.norm()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(d * sae.W_dec[feature].norm(), sae.W_dec[feature].cpu())
    norm = float(np.median(base.norms("resid")[1:, 13]))
    steered = llmri.capture(
        real_model, prompt, saes=[sae], sae_k=8, max_new_tokens=6,
        interventions=[llmri.steer(d, layers=13, scale=0.5 * norm, positions="all")],
    )  # fmt: skip
    before = base.sae(sae.name).activation(feature)[1:]
    after = steered.sae(sae.name).activation(feature)[1:]
    print(f"feature {feature} at resid 15, steered at resid 13: mean {before.mean():.3f} -> {after.mean():.3f}")
    assert (after > before).all() and after.mean() > before.mean() + 0.2  # it fires at every position


def test_a_feature_out_of_range_is_one_line() -> None:
    from llmri.readouts.sae import SAE

    w = torch.eye(4)
    sae = SAE(W_enc=w, b_enc=torch.zeros(4), W_dec=2 * w, b_dec=torch.zeros(4), architecture="relu", name="s",
              source_format="test", path="<s>", layer=0, signal="resid")  # fmt: skip
    assert sae.direction(2, normalize=False).tolist() == [0.0, 0.0, 2.0, 0.0]
    assert sae.direction(2).tolist() == [0.0, 0.0, 1.0, 0.0]
    with pytest.raises(SAEError, match="no feature 4 \\(it has 0-3\\)"):
        sae.direction(4)
