"""A direction from prompts answering " Paris" against prompts answering something else raises
p(" Paris") when added and lowers it when subtracted (the bundled model, llmri's own steering in
the hf backend's step; p from the step's logits). docs/interventions.md states the measured sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmri
from llmri.backends.hf import HFBackend
from llmri.interventions import Plan

pytestmark = pytest.mark.slow

PARIS = ["The capital of France is", "The Eiffel Tower is in", "The Louvre museum is in", "Notre-Dame cathedral is in"]
OTHER = ["The capital of Italy is", "The Colosseum is in", "Big Ben is in", "The Brandenburg Gate is in"]
PROMPT = "Next summer I am travelling to"
LAYER = 12
SCALES = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)


def p_paris(model, d, scale) -> float:
    ids = model.tokenizer(PROMPT)["input_ids"]
    be = HFBackend(model, ["resid"])
    rec = llmri.steer(d, layers=LAYER, scale=scale, positions="all")
    be.intervene(Plan([rec], n_layers=be.n_layers, d_model=be.d_model, n_prompt=len(ids)))
    logits = be.step(torch.tensor([ids])).logits[-1]
    paris = model.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    return float(torch.softmax(logits.float(), -1)[paris])


def test_a_paris_direction_moves_p_paris_both_ways(real_model):
    d = llmri.direction(real_model, PARIS, OTHER, layers=[LAYER])
    p = np.array([p_paris(real_model, d, s) for s in SCALES])
    print("p(' Paris') by scale", dict(zip(SCALES, p.round(4).tolist(), strict=True)))
    base = p[SCALES.index(0.0)]
    assert base > 0
    assert (np.diff(p) > 0).all()  # down when subtracted, up when added, more with more
    assert p[-1] > 4 * base and p[0] < base / 4
