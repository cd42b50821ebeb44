"""Readouts in the capture: ``llmri.capture(..., lens=True, attention=True)``, the session's
``lens()`` / ``attention()``, the store arrays, the CLI flags and the exports.

Fast tests run a tiny random Llama (vocabulary 257, the synthetic backend's byte tokenizer)
through the real hf backend; the slow ones check the bundled model against Hugging Face's own
``output_hidden_states`` / ``output_attentions`` run on a copy of the model.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import llmri
from llmri import CaptureError, StoreError
from llmri.backends.synthetic import ByteTokenizer
from llmri.models import LoadedModel

PROMPT = "Why is the sky blue?"


def tiny_model(seed: int = 0, **cfg) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=257,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        eos_token_id=256,
        bos_token_id=256,
        **cfg,
    )
    model = LlamaForCausalLM(config).eval()
    return LoadedModel(model=model, tokenizer=ByteTokenizer(), name=f"tiny-llama-{seed}", path="", fingerprint="tiny")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def _cap(model, **kw):
    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("ignore_eos", True)
    return llmri.capture(model, PROMPT, chat=False, **kw)


# -- the lens ----------------------------------------------------------------------------------


def test_lens_session_arrays_and_alignment(tiny):
    s = _cap(tiny, lens=True)
    lens = s.lens()
    n, n_layers = len(s), 3
    assert s.readouts == ["lens"] and s.meta["lens"]["k"] == 5
    assert lens.layers == s.layers
    assert lens.top_ids.shape == (n, n_layers, 5) and lens.top_ids.dtype == np.int32
    assert lens.top_probs.shape == (n, n_layers, 5) and lens.top_probs.dtype == np.float32
    for f in ("next_prob", "next_rank", "entropy"):
        assert getattr(lens, f).shape == (n, n_layers)
    # every position but the last has its next token; the last has none
    assert np.isfinite(lens.next_prob[:-1]).all() and (lens.next_rank[:-1] >= 0).all()
    assert np.isnan(lens.next_prob[-1]).all() and (lens.next_rank[-1] == -1).all()
    # last layer: the model's own distribution, aligned with the token table (greedy decode)
    lp = s.tokens.logprob
    np.testing.assert_allclose(lens.next_prob[:-1, -1], np.exp(lp[1:]), rtol=1e-4, atol=1e-6)
    gen = np.array([i for i, r in enumerate(s.tokens.role) if r == "generated"])
    assert (lens.top_ids[gen - 1, -1, 0] == s.tokens.ids[gen]).all()  # greedy: top-1 is what came next
    assert (lens.next_rank[gen - 1, -1] == 0).all()
    # the token table's top-k at t + 1 is the lens's last layer at t
    np.testing.assert_array_equal(lens.top_ids[:-1, -1], s.tokens.top_ids[1:])
    np.testing.assert_allclose(lens.top_probs[:-1, -1], s.tokens.top_probs[1:], rtol=1e-4, atol=1e-6)


def test_lens_does_not_change_what_is_generated(tiny):
    for kw in ({}, {"stop": "a"}, {"temperature": 0.8, "seed": 3}):
        a, b = _cap(tiny, max_new_tokens=10, **kw), _cap(tiny, max_new_tokens=10, lens=True, **kw)
        assert a.tokens.ids.tolist() == b.tokens.ids.tolist(), kw
        assert a.meta["stop_reason"] == b.meta["stop_reason"]
        np.testing.assert_array_equal(a.frames("resid"), b.frames("resid"))


def test_lens_over_a_prefill_in_chunks(tiny, monkeypatch):
    from llmri import decode

    whole = _cap(tiny, lens=True)
    monkeypatch.setattr(decode, "PREFILL_CHUNK", 4)
    chunked = _cap(tiny, lens=True)
    a, b = whole.lens(), chunked.lens()
    assert (a.top_ids == b.top_ids).all() and (a.next_rank == b.next_rank).all()
    np.testing.assert_allclose(b.next_prob, a.next_prob, atol=1e-5)


def test_lens_stopped_early_has_no_next_token_for_its_last_frame(tiny):
    st = llmri.stream(tiny, PROMPT, chat=False, lens=True, max_new_tokens=20, ignore_eos=True)
    got = []
    for f in st:
        got.append(f)
        if f.token.role == "generated" and len([g for g in got if g.token.role == "generated"]) == 3:
            st.stop()
    gen = [f for f in got if f.token.role == "generated"]
    assert st.stop_reason == "stopped"
    assert np.isnan(got[-1].lens.next_prob).all() and (got[-1].lens.next_rank == -1).all()
    assert np.isfinite(got[-2].lens.next_prob).all()
    assert 3 <= len(gen) <= 4


def test_lens_needs_resid_and_an_unembedding(tiny, synthetic_model):
    with pytest.raises(CaptureError, match="add 'resid' to signals"):
        _cap(tiny, lens=True, signals="mlp")
    with pytest.raises(CaptureError, match="cannot find the model's final norm / unembedding: lens=True"):
        llmri.stream(synthetic_model, PROMPT, lens=True)


def test_a_session_without_readouts_says_so(tiny):
    s = _cap(tiny, max_new_tokens=2)
    assert s.readouts == []
    with pytest.raises(StoreError, match="has no lens readout .capture with lens=True"):
        s.lens()
    with pytest.raises(StoreError, match="has no attention readout"):
        s.attention()


def test_lens_range(tiny):
    s = _cap(tiny, lens=True)
    whole, part = s.lens(), s.lens(3, 7)
    assert len(part) == 4
    np.testing.assert_array_equal(part.top_ids, whole.top_ids[3:7])
    assert math.isnan(float(s.lens(-1).next_prob[0, 0]))


_ = copy  # used by the slow tests


# -- the real bundled model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_lens(real_model):
    return llmri.capture(real_model, PROMPT, chat=True, max_new_tokens=8, lens=True, reducer="neurons")


@pytest.mark.slow
def test_real_model_lens_at_the_last_layer_is_the_model(real_model, real_lens):
    """Top-1 at the last layer is the greedy next token, and next_prob[t, -1] is
    exp(tokens[t + 1].logprob); every layer against output_hidden_states through norm and lm_head."""
    s = real_lens
    lens, t = s.lens(), s.tokens
    n = len(s)
    gen = np.array([i for i, r in enumerate(t.role) if r == "generated"])
    assert (lens.top_ids[gen - 1, -1, 0] == t.ids[gen]).all()
    err = float(np.abs(lens.next_prob[:-1, -1] - np.exp(t.logprob[1:])).max())
    print(f"next_prob[t, -1] vs exp(logprob[t + 1]): max abs error {err:.2e}")
    assert err <= 2e-5
    assert np.isnan(lens.next_prob[-1]).all() and (lens.next_rank[-1] == -1).all()
    ref = copy.deepcopy(real_model.model)  # output_hidden_states installs recording hooks for good
    with torch.inference_mode():
        out = ref(torch.tensor([t.ids.tolist()]), output_hidden_states=True, use_cache=False)
        errs = []
        for layer in range(30):
            h = out.hidden_states[layer + 1][0]
            logits = (ref.lm_head(h) if layer == 29 else ref.lm_head(ref.model.norm(h))).double()
            p = torch.softmax(logits, -1)
            nxt = p[torch.arange(n - 1), torch.tensor(t.ids[1:].tolist())].numpy()
            errs.append(float(np.abs(lens.next_prob[:-1, layer] - nxt).max()))
            ent = -(p * torch.log_softmax(logits, -1)).sum(-1).numpy()
            errs.append(float(np.abs(lens.entropy[:, layer] - ent).max()))
    print(f"lens vs output_hidden_states, every layer: max abs error {max(errs):.2e}")
    assert max(errs) <= 1e-4
