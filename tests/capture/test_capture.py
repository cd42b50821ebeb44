"""Capture on the real bundled model: faithfulness, decoding, token statistics, cleanup."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pytest
import torch

import llmri
from llmri.backends.hf import HFBackend

pytestmark = pytest.mark.slow

PROMPT = "Why is the sky blue?"


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.model.modules())


@pytest.fixture(scope="module")
def neurons_session(real_model):
    return llmri.capture(real_model, PROMPT, chat=True, max_new_tokens=12, reducer="neurons")


@pytest.fixture(scope="module")
def reference(real_model):
    """A copy of the model for Hugging Face's own runs: ``output_hidden_states`` leaves
    transformers' recording hooks on the model it runs, for good."""
    import copy

    return copy.deepcopy(real_model.model)


def test_resid_neurons_frames_equal_output_hidden_states(real_model, neurons_session, reference):
    s = neurons_session
    ids = torch.from_numpy(s.tokens.ids)[None]
    with torch.no_grad():
        hs = reference(ids, output_hidden_states=True).hidden_states
    frames = torch.from_numpy(s.frames("resid").astype(np.float32)).reshape(len(s), real_model.n_layers, -1)
    frames = frames[:, :, : real_model.d_model]
    # hidden_states[l + 1] is block l's output, except the last entry, which transformers stores after the final norm.
    for layer in range(real_model.n_layers - 1):
        ref = hs[layer + 1][0]
        # frames are float16: allow its rounding (relative 2^-11) plus a small absolute slack
        torch.testing.assert_close(frames[:, layer], ref, rtol=1e-3, atol=2e-2)
    last = real_model.model.model.norm(frames[:, -1])
    torch.testing.assert_close(last, hs[-1][0], rtol=1e-3, atol=2e-2)


def test_attn_and_mlp_add_up_to_the_residual_stream(real_model):
    """Unreduced float32: each block's output == its input + attention output + MLP output."""
    before = _hook_count(real_model)  # transformers may keep hooks of its own (output recording)
    cap = HFBackend(real_model, ["resid", "attn", "mlp"])
    ids = real_model.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    step = cap.step(ids)
    with torch.no_grad():
        emb = real_model.model.model.embed_tokens(ids)[0]
    prev = emb
    for layer in range(cap.n_layers):
        r, a, m = (step.acts[s][:, layer].float() for s in ("resid", "attn", "mlp"))
        torch.testing.assert_close(r, prev + a + m, rtol=1e-4, atol=1e-3)
        prev = r
    assert _hook_count(real_model) == before


def test_a_step_without_logits_skips_the_lm_head_and_records_the_same(real_model):
    """The last generated token's forward (and calibration's) runs the decoder only."""
    cap = HFBackend(real_model, ["resid", "attn", "mlp"])
    ids = real_model.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    calls = []
    handle = real_model.model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        full = cap.step(ids)
        assert len(calls) == 1 and full.logits.shape == (ids.shape[1], real_model.model.config.vocab_size)
        bare = cap.step(ids, logits=False)
        assert len(calls) == 1 and bare.logits is None
        nxt = torch.tensor([[int(full.logits[-1].argmax())]])
        a, b = cap.step(nxt, full.cache), cap.step(nxt, bare.cache, logits=False)  # caches extended alike
        assert len(calls) == 2
    finally:
        handle.remove()
    for s in ("resid", "attn", "mlp"):
        torch.testing.assert_close(full.acts[s], bare.acts[s], rtol=0, atol=0)
        torch.testing.assert_close(a.acts[s], b.acts[s], rtol=0, atol=0)


def test_greedy_tokens_equal_model_generate(neurons_session, reference):
    s = neurons_session
    n_prompt = s.tokens.role.count("prompt")
    prompt = torch.from_numpy(s.tokens.ids[:n_prompt])[None]
    with torch.no_grad():
        ref = reference.generate(prompt, max_new_tokens=12, do_sample=False)[0, n_prompt:].tolist()
    assert list(s.tokens.ids[n_prompt:]) == ref


def test_prompt_frames_and_token_statistics(neurons_session):
    s = neurons_session
    roles = s.tokens.role
    n_prompt = roles.count("prompt")
    assert n_prompt > 5 and roles == ["prompt"] * n_prompt + ["generated"] * (len(s) - n_prompt)
    first = s.tokens[0]
    assert math.isnan(first.logprob) and first.top_ids == ()
    for tok in list(s.tokens)[1:]:
        assert tok.logprob <= 0 and tok.entropy >= 0
        assert len(tok.top_ids) == 5 and list(tok.top_probs) == sorted(tok.top_probs, reverse=True)
        assert 0 < sum(tok.top_probs) <= 1.0001
    for tok in list(s.tokens)[n_prompt:]:  # greedy: the chosen token is the top-1 alternative
        assert tok.id == tok.top_ids[0]
        assert tok.logprob == pytest.approx(math.log(tok.top_probs[0]), abs=1e-4)
    assert "<|im_start|>" in s.prompt_text and PROMPT in s.prompt_text
    assert s.text and s.text == "".join(s.tokens.text[n_prompt:])


def test_norms_and_sparsity_describe_the_unreduced_vectors(neurons_session):
    s = neurons_session
    x = s.frames("resid").astype(np.float32).reshape(len(s), 30, -1)[:, :, :576]
    norm, sparsity = s.stats("resid")
    np.testing.assert_allclose(norm, np.linalg.norm(x, axis=-1), rtol=2e-3)
    assert norm.shape == sparsity.shape == (len(s), 30)
    assert ((sparsity >= 0) & (sparsity <= 1)).all()


def test_random_reducer_all_signals(real_session):
    s = real_session
    assert s.signals == ["resid", "attn", "mlp"]
    for sig in s.signals:
        f = s.frames(sig)
        assert f.shape == (len(s), 30, 16, 16) and f.dtype == np.float16
        assert np.isfinite(f).all() and np.abs(f).max() > 0
        assert len(s.meta["scales"][sig]) == 30 and min(s.meta["scales"][sig]) > 0
    assert s.meta["reducer"]["kind"] == "random" and s.meta["model"]["fingerprint"]
    assert not np.array_equal(s.frames("resid")[-1], s.frames("resid")[-2])
    assert s.frames("resid", 3, 7).shape[0] == 4


def test_sampling_is_reproducible_with_a_seed(real_model):
    kw = dict(max_new_tokens=10, temperature=0.9, top_p=0.95, signals="resid", chat=True)
    a = llmri.capture(real_model, "Tell me a story.", seed=7, **kw)
    b = llmri.capture(real_model, "Tell me a story.", seed=7, **kw)
    c = llmri.capture(real_model, "Tell me a story.", seed=8, **kw)
    assert list(a.tokens.ids) == list(b.tokens.ids)
    np.testing.assert_array_equal(a.frames("resid"), b.frames("resid"))
    assert list(a.tokens.ids) != list(c.tokens.ids)


def test_stop_string_and_raw_text(real_model):
    s = llmri.capture(real_model, "1, 2, 3, 4,", max_new_tokens=30, signals="resid", stop=["7"])
    assert s.meta["stop_reason"] == "stop_string"
    assert "7" in s.text and "<|im_start|>" not in s.prompt_text
    assert s.prompt_text == "1, 2, 3, 4,"


def test_chat_messages_use_the_chat_template(real_model):
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}]
    s = llmri.capture(real_model, msgs, max_new_tokens=3, signals="resid")
    assert s.meta["messages"] == msgs and s.meta["chat"]
    assert "You are terse." in s.prompt_text and s.prompt_text.rstrip().endswith("assistant")


def test_byte_level_pieces_render_whole_characters(real_model):
    text = "naïve café 🚀 東京"
    s = llmri.capture(real_model, text, max_new_tokens=1, signals="resid")
    assert s.prompt_text == text
    assert all("\ufffd" not in t for t in s.tokens.text)


def test_hooks_removed_after_an_exception_mid_generation(real_model, monkeypatch):
    before = _hook_count(real_model)
    # built first: calibration (if not cached) runs the model too
    st = llmri.stream(real_model, PROMPT, max_new_tokens=8, signals=["resid", "mlp"], ignore_eos=True)
    mlp = real_model.model.model.layers[5].mlp
    orig = mlp.forward
    calls = {"n": 0}

    def boom(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # the prefill, two decode steps, then a failure inside the forward
            raise RuntimeError("boom")
        return orig(*a, **kw)

    monkeypatch.setattr(mlp, "forward", boom)
    got = []
    with pytest.raises(RuntimeError, match="boom"):
        for f in st:
            got.append(f)
    assert calls["n"] == 4 and got[-1].token.role == "generated"
    assert _hook_count(real_model) == before
    monkeypatch.undo()
    s = llmri.capture(real_model, PROMPT, max_new_tokens=2, signals="resid")  # the model is unaffected
    assert len(s) > 2


def test_early_stop_leaves_no_hooks_and_keeps_no_frames(real_model):
    before = _hook_count(real_model)
    st = llmri.stream(real_model, PROMPT, max_new_tokens=20, signals=["resid", "mlp"])
    refs = []
    for i, frame in enumerate(st):
        refs.append(weakref.ref(frame))
        assert _hook_count(real_model) == before  # hooks live only inside a forward
        if i == 12:
            break
    del frame
    gc.collect()
    # the stream holds no frames: memory does not grow with the number of tokens
    assert sum(r() is not None for r in refs) == 0
    st.close()
    st.stop()


def test_stop_request_keeps_what_was_generated(real_model):
    st = llmri.stream(real_model, PROMPT, chat=True, max_new_tokens=50, signals="resid")
    frames = []
    for f in st:
        frames.append(f)
        if f.token.role == "generated" and f.token.index >= len(st.prompt_ids) + 2:
            st.stop()
    assert st.stop_reason == "stopped"
    assert sum(f.token.role == "generated" for f in frames) == 3


def test_bad_capture_arguments(real_model):
    with pytest.raises(llmri.CaptureError, match="unknown signal 'foo'"):
        llmri.capture(real_model, PROMPT, signals="foo")
    with pytest.raises(llmri.CaptureError, match="top_p"):
        llmri.capture(real_model, PROMPT, top_p=0)
    with pytest.raises(llmri.CaptureError, match="empty"):
        llmri.capture(real_model, "", max_new_tokens=2)
    with pytest.raises(llmri.ReducerError, match="unknown reducer"):
        llmri.capture(real_model, PROMPT, reducer="pca9")
    with pytest.raises(llmri.ReducerError, match="bad tile"):
        llmri.capture(real_model, PROMPT, tile="16by16")
    with pytest.raises(llmri.CaptureError, match="unknown backend"):
        llmri.capture(real_model, PROMPT, backend="nope")
    with pytest.raises(llmri.CaptureError, match="message 0"):
        llmri.capture(real_model, [{"role": "user"}])
    with pytest.raises(llmri.StoreError, match="no signal 'attn'"):
        llmri.capture(real_model, PROMPT, max_new_tokens=1, signals="resid").frames("attn")
