"""The patching sweep on the bundled model against a hand-written loop: one forward per cell with
a hook written here on the block / self_attn / mlp module; and stored with the pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmri
from llmri._errors import CaptureError
from llmri.interventions.patching import PatchingResult

pytestmark = pytest.mark.slow

CLEAN, CORRUPT = "The capital of France is", "The capital of Italy is"
TARGETS = (" Paris", " Rome")


def _module(model, signal, layer):
    block = model.model.model.layers[layer]
    return {"resid": block, "attn": block.self_attn, "mlp": block.mlp}[signal]


def _out(o):
    return o[0] if isinstance(o, tuple) else o


def _reference(model, signal, layer):
    """Corrupt's logit difference with ``signal`` at ``layer`` set to clean's at one position, for
    each position: a forward per position, the hooks written here."""
    tok = model.tokenizer
    a, b = (tok(t, add_special_tokens=False)["input_ids"][0] for t in TARGETS)
    mod = _module(model, signal, layer)
    seen = {}
    h = mod.register_forward_hook(lambda _m, _a, o: seen.__setitem__("v", _out(o)[0].clone()))
    try:
        with torch.no_grad():
            model.model(torch.tensor([tok(CLEAN)["input_ids"]]))
    finally:
        h.remove()
    out = []
    for pos in range(seen["v"].shape[0]):

        def put(_m, _a, o, pos=pos):
            t = _out(o).clone()
            t[0, pos] = seen["v"][pos]
            return (t, *o[1:]) if isinstance(o, tuple) else t

        h = mod.register_forward_hook(put)
        try:
            with torch.no_grad():
                logits = model.model(torch.tensor([tok(CORRUPT)["input_ids"]])).logits[0, -1]
        finally:
            h.remove()
        out.append(float(logits[a] - logits[b]))
    return np.array(out)


def test_the_batched_sweep_agrees_with_a_hand_written_loop(real_model, tmp_path):
    layers = [5, 29]
    r = llmri.patching(real_model, CLEAN, CORRUPT, targets=TARGETS, layers=layers, batch=16,
                       store=tmp_path / "p.zarr", max_new_tokens=1)  # fmt: skip
    n = len(real_model.tokenizer(CORRUPT)["input_ids"])
    assert r.values.shape == (3, 2, n) and r.signals == ("resid", "attn", "mlp")
    assert r.clean > 0 > r.corrupt  # Paris for France, Rome for Italy
    for si, s in enumerate(r.signals):
        for li, layer in enumerate(layers):
            np.testing.assert_allclose(r.values[si, li], _reference(real_model, s, layer), atol=2e-3, err_msg=s)
    # resid at the last layer and last position is the clean run's output there
    assert r.values[0, -1, -1] == pytest.approx(r.clean, abs=1e-3)
    assert r.normalized()[0, -1, -1] == pytest.approx(1.0, abs=1e-3)
    x = r.to_xarray()
    assert x.dims == ("signal", "layer", "position") and list(x.token.values) == list(r.tokens)
    store = llmri.open_store(tmp_path / "p.zarr")
    # by prompt, not by creation time: both sessions can be created within one second
    by_prompt = {s.meta["prompt"]: s for s in store.sessions()}
    assert len(by_prompt) == 2
    clean_s, corrupt_s = by_prompt[CLEAN], by_prompt[CORRUPT]
    assert corrupt_s.meta["baseline"] == clean_s.id and "patching" not in clean_s.meta
    back = PatchingResult.of(corrupt_s)
    np.testing.assert_allclose(back.values, r.values, atol=1e-5)
    assert back.tokens == r.tokens


def test_bad_sweeps_are_one_line(real_model):
    with pytest.raises(CaptureError, match="same length"):
        llmri.patching(real_model, CLEAN, "Italy", layers=[0])
    with pytest.raises(CaptureError, match="tokens; a logit difference needs one token"):
        llmri.patching(real_model, CLEAN, CORRUPT, targets=(" Parisian capital", " Rome"), layers=[0])
