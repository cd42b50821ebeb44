"""Steering by a feature: ``SAE.direction(feature)`` (its decoder row) is a ``llmri.Direction`` that
``llmri.steer`` takes as it is; steering with it raises that feature at the SAE's read."""

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
    d = sae.direction(feature, layers=13)  # two layers below its read
    assert isinstance(d, llmri.Direction) and d.layers == (13,) and d.d_model == 576
    assert d.provenance["feature"] == feature and d.provenance["sae_layer"] == 15 and d.model is None
    row = torch.from_numpy(d.array()[0].copy())
    assert float(row.norm()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(row * sae.W_dec[feature].norm().cpu(), sae.W_dec[feature].cpu())
    norm = float(np.median(base.norms("resid")[1:, 13]))
    steered = llmri.capture(
        real_model, prompt, saes=[sae], sae_k=8, max_new_tokens=6,
        interventions=[llmri.steer(d, scale=0.5 * norm, positions="all")],
    )  # fmt: skip
    before = base.sae(sae.name).activation(feature)[1:]
    after = steered.sae(sae.name).activation(feature)[1:]
    print(f"feature {feature} at resid 15, steered at resid 13: mean {before.mean():.3f} -> {after.mean():.3f}")
    assert (after > before).all() and after.mean() > before.mean() + 0.2  # it fires at every position


def _sae(layer):
    from llmri.readouts.sae import SAE

    w = torch.eye(4)
    return SAE(W_enc=w, b_enc=torch.zeros(4), W_dec=2 * w, b_dec=torch.zeros(4), architecture="relu", name="s",
               source_format="test", path="<s>", layer=layer, signal="mlp")  # fmt: skip


def test_a_features_direction_is_a_direction_with_its_provenance_that_steer_takes() -> None:
    sae = _sae(1)
    d = sae.direction(2)
    assert isinstance(d, llmri.Direction) and d.layers == (1,) and d.model is None
    assert d.array().tolist() == [[0.0, 0.0, 1.0, 0.0]]
    assert sae.direction(2, normalize=False).array().tolist() == [[0.0, 0.0, 2.0, 0.0]]
    assert d.provenance == {
        "method": "sae_feature", "signal": "mlp", "sae": "s", "feature": 2, "sae_layer": 1, "sae_format": "test",
        "sae_path": "<s>", "normalized": True,
    }  # fmt: skip
    rec = llmri.steer(d, scale=3.0)  # at the SAE's layer, no layers= needed
    assert rec.layers == (1,) and rec.direction.array().tolist() == [[0.0, 0.0, 1.0, 0.0]] and rec.model is None
    assert sae.direction(0, layers=range(2, 4)).layers == (2, 3)
    with pytest.raises(llmri.CaptureError, match="no vector for layer 0"):
        llmri.steer(d, layers=0)


def test_a_feature_out_of_range_or_an_sae_without_a_layer_is_one_line() -> None:
    with pytest.raises(SAEError, match="no feature 4 \\(it has 0-3\\)"):
        _sae(0).direction(4)
    with pytest.raises(SAEError, match="does not say which layer it reads: give direction\\(..., layers=\\)"):
        _sae(None).direction(1)
    assert _sae(None).direction(1, layers=2).layers == (2,)
