"""Interventions on the bundled model (SmolLM2-135M, 30 layers, d_model 576) against an independent
reference: the same edit by a hand-written forward hook around one greedy ``model.generate()``.
llmri steps token by token over its own KV cache (the Neuronpedia #37 failure: steering that gives
other tokens streamed than all at once); the tokens and the edited layer's vectors must agree."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import llmri

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
N_NEW = 6
OPTS = {"max_new_tokens": N_NEW, "reducer": "neurons", "frame_dtype": "float32", "backend": "hf", "ignore_eos": True}
D = 576


def _hooks(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _resid(session, layer: int) -> np.ndarray:
    """The resid vectors of ``layer`` at every position, from the neurons frames ``[T, D]``."""
    return session.frames("resid")[:, layer].reshape(len(session), -1)[:, :D]


def _reference(model, prompt_ids: list[int], layer: int, edit) -> tuple[list[int], np.ndarray]:
    """Greedy ``generate()`` with ``edit(h, positions)`` applied by a forward hook on block ``layer``
    (positions counted by the hook itself); the new tokens and that block's output (hidden states).
    On a copy of the model: a generate() with output_hidden_states leaves hooks of transformers' own on
    the model it runs, and the suite's shared model must stay as llmri leaves it (tests/viewer/test_launch.py
    checks it carries no hook)."""
    hf = copy.deepcopy(model.model)
    n_seen = [0]

    def hook(_mod, _args, out):
        h = out[0] if isinstance(out, tuple) else out
        pos = torch.arange(n_seen[0], n_seen[0] + h.shape[1])
        n_seen[0] += h.shape[1]
        h = edit(h.clone(), pos)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = hf.model.layers[layer].register_forward_hook(hook, prepend=True)
    try:
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([prompt_ids]),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                max_new_tokens=N_NEW,
                min_new_tokens=N_NEW,
                do_sample=False,
                output_hidden_states=True,
                return_dict_in_generate=True,
            )
    finally:
        handle.remove()
    new = out.sequences[0, len(prompt_ids) :].tolist()
    hs = torch.cat([step[layer + 1][0] for step in out.hidden_states], dim=0)  # [prompt + N_NEW - 1, D]
    return new, hs.float().numpy()


@pytest.fixture(scope="module")
def baseline(real_model):
    return llmri.capture(real_model, PROMPT, **OPTS)


def _prompt_ids(session) -> list[int]:
    return [int(i) for i, r in zip(session.tokens.ids, session.tokens.role, strict=True) if r == "prompt"]


def _check_against_reference(real_model, baseline, record, layer, edit):
    before = _hooks(real_model.model)
    s = llmri.capture(real_model, PROMPT, interventions=[record], **OPTS)
    assert _hooks(real_model.model) == before
    ids = _prompt_ids(baseline)
    new, hs = _reference(real_model, ids, layer, edit)
    got = [int(i) for i in s.tokens.ids[len(ids) :]]
    assert got == new
    np.testing.assert_allclose(_resid(s, layer)[: len(hs)], hs, rtol=1e-4, atol=1e-4)
    return s


@pytest.mark.parametrize("positions", ["generated", "all"])
def test_steering_streamed_equals_one_generate_with_a_reference_hook(real_model, baseline, positions):
    layer, scale = 12, 6.0
    v = np.random.default_rng(0).standard_normal(D).astype(np.float32)
    v /= np.linalg.norm(v)
    n_prompt = len(_prompt_ids(baseline))
    add = torch.from_numpy(scale * v)

    def edit(h, pos):
        mask = pos >= n_prompt if positions == "generated" else torch.ones_like(pos, dtype=torch.bool)
        h[0, mask] = h[0, mask] + add.to(h.dtype)
        return h

    s = _check_against_reference(
        real_model, baseline, llmri.steer(v, layer, scale=scale, positions=positions), layer, edit
    )
    assert s.text != baseline.text, "the steer should change the answer, or the test shows nothing"
    if positions == "generated":  # the prompt's frames are the baseline's
        assert np.array_equal(s.frames("resid")[:n_prompt], baseline.frames("resid")[:n_prompt])


def test_ablating_a_neuron_streamed_equals_the_reference_and_shows_zero(real_model, baseline):
    layer = 8
    top = int(np.abs(_resid(baseline, layer)).mean(0).argmax())  # a neuron that matters (a massive activation)

    def edit(h, pos):
        h[..., top] = 0
        return h

    s = _check_against_reference(real_model, baseline, llmri.ablate(layer, "resid", neurons=[top]), layer, edit)
    assert not _resid(s, layer)[:, top].any()
    assert _resid(baseline, layer)[:, top].all()


def test_ablating_the_mlp_leaves_attention_alone_in_the_residual_step(real_model):
    layer = 17
    s = llmri.capture(real_model, PROMPT, interventions=[llmri.ablate(layer, "mlp")], **OPTS)
    r, a = s.frames("resid"), s.frames("attn")
    assert not s.frames("mlp")[:, layer].any()
    step = r[:, layer] - r[:, layer - 1]
    np.testing.assert_allclose(step, a[:, layer], rtol=1e-4, atol=1e-4 * float(np.abs(r[:, layer]).max()))


def test_scale_zero_and_nothing_ablated_give_the_baseline_exactly(real_model, baseline):
    before = _hooks(real_model.model)
    v = np.ones(D, dtype=np.float32)
    for interventions in (
        [],
        [llmri.steer(v, range(30), scale=0.0, positions="all")],
        [llmri.ablate(3, "resid", neurons=[])],
    ):
        s = llmri.capture(real_model, PROMPT, interventions=interventions, **OPTS)
        assert list(s.tokens.ids) == list(baseline.tokens.ids)
        for sig in baseline.signals:
            assert np.array_equal(s.frames(sig), baseline.frames(sig)), sig
    assert _hooks(real_model.model) == before
    after = llmri.capture(real_model, PROMPT, **OPTS)
    assert np.array_equal(after.frames("resid"), baseline.frames("resid"))
