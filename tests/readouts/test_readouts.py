"""Readouts: the logit lens, attention per head and markers, against independent references.

Fast tests use toy heads, constructed weights and tiny random transformers models; the slow ones
check the real bundled model against Hugging Face's own ``output_hidden_states`` /
``output_attentions`` run (eager attention, full sequence, no cache) on a copy of the model.
Tolerances (float32): lens probabilities within 1e-5 absolute of the reference (observed ~1e-6),
attention weights within 1e-5 (observed ~1e-6), logits across backends within 1e-3 as in
test_backends_agree.py.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from llmri._errors import CaptureError
from llmri.backends.base import LensHead
from llmri.readouts import (
    Marker,
    Thresholds,
    attention_jumps,
    attention_readout,
    check_lens_head,
    decision_layers,
    fill_next,
    find_markers,
    lens_error,
    logit_lens,
    markers,
)

PROB_ATOL = 1e-5
ATTN_ATOL = 1e-5
LOGIT_ATOL = 1e-3


# -- the logit lens on a toy head ------------------------------------------------------------


def _toy_head(d: int = 8, vocab: int = 50, seed: int = 0) -> LensHead:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(vocab, d, generator=g)
    norm = torch.nn.LayerNorm(d)
    return LensHead(norm=norm, unembed=lambda h: h @ w.T)


def _brute(resid: torch.Tensor, head: LensHead, next_ids: list[int], k: int):
    """The lens by the definition, one position and layer at a time, in float64."""
    n, n_layers, _ = resid.shape
    out = {
        "top_ids": np.full((n, n_layers, k), -1),
        "top_probs": np.full((n, n_layers, k), np.nan),
        "entropy": np.zeros((n, n_layers)),
        "next_prob": np.full((n, n_layers), np.nan),
        "next_rank": np.full((n, n_layers), -1),
    }
    for t in range(n):
        for layer in range(n_layers):
            with torch.no_grad():
                logits = head(resid[t, layer]).double()
            p = torch.softmax(logits, -1)
            order = torch.argsort(p, descending=True, stable=True)[:k]
            out["top_ids"][t, layer] = order.numpy()
            out["top_probs"][t, layer] = p[order].numpy()
            out["entropy"][t, layer] = float(-(p * p.log()).sum())
            if t < len(next_ids):
                out["next_prob"][t, layer] = float(p[next_ids[t]])
                out["next_rank"][t, layer] = int((logits > logits[next_ids[t]]).sum())
    return out


def _assert_rows(rows, want) -> None:
    """``rows`` (LensRows) equal the definition's ``want`` (:func:`_brute`) within float32 rounding."""
    np.testing.assert_array_equal(rows.top_ids, want["top_ids"])
    np.testing.assert_allclose(rows.top_probs, want["top_probs"], atol=1e-6)
    np.testing.assert_allclose(rows.entropy, want["entropy"], atol=1e-5)
    np.testing.assert_allclose(rows.next_prob, want["next_prob"], atol=1e-6)
    np.testing.assert_array_equal(rows.next_rank, want["next_rank"])


@pytest.mark.parametrize("stats_elements", [1, 120, 1 << 17])
@pytest.mark.parametrize("max_elements", [1, 200, 1 << 24])
def test_lens_equals_its_definition(max_elements, stats_elements, monkeypatch):
    from llmri.readouts import lens

    monkeypatch.setattr(lens, "STATS_ELEMENTS", stats_elements)  # statistics a row, two rows, a group at a time
    head = _toy_head()
    resid = torch.randn(6, 4, 8, generator=torch.Generator().manual_seed(1))
    next_ids = [3, 7, 7, 0, 49, 12]
    rows = logit_lens(resid, head, next_ids, k=5, max_elements=max_elements)
    want = _brute(resid, head, next_ids, 5)
    assert rows.pending is None and len(rows) == 6
    assert rows.top_ids.dtype == np.int64 and rows.top_probs.dtype == np.float32
    _assert_rows(rows, want)


def test_lens_last_row_waits_for_its_next_token():
    head = _toy_head()
    resid = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(2))
    rows = logit_lens(resid, head, [5, 9])  # the token after position 2 is not known yet
    assert rows.pending is not None
    assert tuple(rows.pending.logits.shape) == (4, 50)  # one position's [L, vocab], no more
    assert np.isnan(rows.next_prob[2]).all() and (rows.next_rank[2] == -1).all()
    assert np.isfinite(rows.top_probs[2]).all()  # what it predicts is known already
    prob, rank = fill_next(rows.pending, 17)
    want = _brute(resid, head, [5, 9, 17], 5)
    np.testing.assert_allclose(prob, want["next_prob"][2], atol=1e-6)
    np.testing.assert_array_equal(rank, want["next_rank"][2])
    np.testing.assert_allclose(rows.next_prob[:2], want["next_prob"][:2], atol=1e-6)
    # a decode step: one position, next unknown
    one = logit_lens(resid[2:], head, [])
    np.testing.assert_array_equal(one.top_ids[0], rows.top_ids[2])
    np.testing.assert_allclose(fill_next(one.pending, 17)[0], prob, atol=1e-7)
    with pytest.raises(ValueError, match="next_ids"):
        logit_lens(resid, head, [1])


def test_lens_of_logits_spread_over_hundreds_equals_its_definition():
    """Most of exp(logit - max) below float32's smallest normal (the statistics clamp there, to
    keep off the CPU's slow subnormal path): the same rows as the float64 definition."""
    from llmri.readouts.lens import EXP_FLOOR

    g = torch.Generator().manual_seed(3)
    w = torch.randn(50, 8, generator=g) * 80
    head = LensHead(norm=torch.nn.LayerNorm(8), unembed=lambda h: h @ w.T)
    resid = torch.randn(4, 3, 8, generator=g)
    spread = head(resid).reshape(-1, 50)
    assert ((spread - spread.amax(-1, keepdim=True)) < EXP_FLOOR).float().mean() > 0.5
    rows = logit_lens(resid, head, [4, 40, 2, 9])
    want = _brute(resid, head, [4, 40, 2, 9], 5)
    ls = torch.log_softmax(head(resid).double(), -1)  # the entropy without 0 * log 0
    want["entropy"] = (-(ls.exp() * ls).sum(-1)).numpy()
    _assert_rows(rows, want)


def test_token_stats_keep_the_logprob_of_a_very_unlikely_token():
    from llmri.capture.frames import token_stats

    logits = torch.tensor([[0.0, -150.0, 2.0, float("-inf")] + [-1.0] * 6])
    chosen, ent, _, _ = token_stats(logits, [1])
    want = torch.log_softmax(logits.double(), -1)
    assert chosen[0] == pytest.approx(float(want[0, 1]), abs=1e-4)  # -152.x, not clamped
    p = want.exp()
    assert ent[0] == pytest.approx(float(-(p[p > 0] * want[p > 0]).sum()), abs=1e-6)
    assert math.isfinite(token_stats(logits, [3])[0][0])  # a masked token: finite, as before


@pytest.mark.parametrize("batch", [1, 2, 3, 8])
def test_lens_queue_fills_each_row_once_its_batch_is_due(batch):
    """Positions pushed a step at a time (a prefill, then decode steps) get the rows of
    :func:`logit_lens` over all of them; a row is complete exactly when ``done`` has passed it,
    and no more than ``batch`` positions with a known next token wait."""
    from llmri.readouts.lensqueue import LensQueue

    head = _toy_head()
    resid = torch.randn(11, 4, 8, generator=torch.Generator().manual_seed(5))
    ids = [3, 7, 7, 0, 49, 12, 5, 5, 30, 1, 2]
    pred = torch.full((11, 50), float("nan"))  # pred[j]: the model's logits at position j - 1
    pred[1:] = head(resid[:-1, -1])
    q = LensQueue(head, head, 4, batch=batch, k=5)
    rows, start = [], 0
    for n in (4, 1, 1, 1, 1, 1, 1, 1):
        rows += q.push(start, ids[start : start + n], resid[start : start + n], pred[start : start + n])
        start += n
        assert q.done + q.waiting == start and 1 <= q.waiting <= batch
        assert all(np.isfinite(r.top_probs).all() for r in rows[: q.done])
        assert all(np.isnan(r.top_probs).all() for r in rows[q.done :])
    assert q.waiting >= 1  # the newest position waits for its next token
    q.flush(last=False)
    assert q.waiting == 1
    q.flush(last=True)
    assert q.waiting == 0 and q.done == 11
    want = _brute(resid, head, ids[1:], 5)
    np.testing.assert_array_equal(np.stack([r.top_ids for r in rows]), want["top_ids"])
    np.testing.assert_allclose(np.stack([r.top_probs for r in rows]), want["top_probs"], atol=1e-6)
    np.testing.assert_allclose(np.stack([r.entropy for r in rows]), want["entropy"], atol=1e-5)
    np.testing.assert_allclose(np.stack([r.next_prob for r in rows]), want["next_prob"], atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(np.stack([r.next_rank for r in rows]), want["next_rank"])
    assert rows[0].top_ids.dtype == np.int32 and rows[0].next_rank.dtype == np.int32


def test_lens_queue_checks_the_head_against_the_models_logits():
    from llmri.readouts.lensqueue import LensQueue

    head = _toy_head()
    resid = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(6))
    wrong = torch.zeros(3, 50)
    q = LensQueue(head, head, 4)
    with pytest.raises(CaptureError, match="does not reproduce"):
        q.push(0, [1, 2, 3], resid, wrong)
    one = LensQueue(head, head, 4)  # a one-position prompt: checked on the next step's logits
    one.push(0, [1], resid[:1], wrong[:1])
    with pytest.raises(CaptureError, match="does not reproduce"):
        one.push(1, [2], resid[1:2], wrong[1:2])


def test_lens_rank_counts_strictly_greater_and_ties():
    logits = torch.tensor([[2.0, 5.0, 5.0, 1.0, 5.0, 0.0]])
    head = LensHead(norm=lambda h: h, unembed=lambda h: h[..., :1] * 0 + logits)
    resid = torch.zeros(4, 1, 1)
    rows = logit_lens(resid, head, [1, 0, 3, 5], k=3)
    assert rows.next_rank[:, 0].tolist() == [0, 3, 4, 5]  # three-way tie at the top: all rank 0
    assert sorted(rows.top_ids[0, 0].tolist()) == [1, 2, 4]
    np.testing.assert_allclose(
        rows.top_probs[0, 0], [math.e**5 / (3 * math.e**5 + math.e**2 + math.e + 1)] * 3, rtol=1e-6
    )


def test_lens_statistics_are_float32_for_a_bfloat16_model():
    toy = _toy_head()
    head = LensHead(norm=lambda h: toy.norm(h.float()).bfloat16(), unembed=lambda h: toy.unembed(h.float()).bfloat16())
    resid = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(4)).bfloat16()
    rows = logit_lens(resid, head, [1, 2])
    assert rows.top_probs.dtype == np.float32 and rows.entropy.dtype == np.float32
    # the statistics of the model's bfloat16 logits, computed in float32 (not rounded to bfloat16)
    as_f32 = LensHead(norm=lambda h: h, unembed=lambda h: head(h))
    want = _brute(resid, as_f32, [1, 2], 5)
    np.testing.assert_allclose(rows.top_probs, want["top_probs"], atol=1e-6)
    np.testing.assert_allclose(rows.entropy, want["entropy"], atol=1e-5)
    np.testing.assert_allclose(rows.next_prob, want["next_prob"], atol=1e-6)


def test_lens_with_k_above_the_vocabulary_pads():
    head = _toy_head(vocab=3)
    rows = logit_lens(torch.randn(2, 2, 8), head, [0, 1], k=5)
    assert (rows.top_ids[..., 3:] == -1).all() and np.isnan(rows.top_probs[..., 3:]).all()
    np.testing.assert_allclose(rows.top_probs[..., :3].sum(-1), 1, atol=1e-6)


def test_check_lens_head_refuses_a_head_that_is_not_the_models():
    head = _toy_head()
    resid = torch.randn(3, 8)
    logits = head(resid)
    assert lens_error(head, resid, logits) < 1e-6
    check_lens_head(head, resid, logits)
    with pytest.raises(CaptureError, match="does not reproduce the model's logits"):
        check_lens_head(head, resid, torch.tanh(logits / 2) * 2)


def test_a_backend_without_lens_says_so(synthetic_model):
    from llmri.backends.synthetic import SyntheticBackend

    with pytest.raises(CaptureError, match="cannot find the model's final norm / unembedding: lens=True"):
        SyntheticBackend(synthetic_model).lens_head()
    assert SyntheticBackend.supports_attention is False


# -- attention readout on constructed weights ------------------------------------------------


def _causal_rows(n_heads: int, n: int, n_total: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_heads, n, n_total, generator=g)
    query = torch.arange(n_total - n, n_total)[:, None]
    scores = scores.masked_fill(torch.arange(n_total)[None] > query, float("-inf"))
    return torch.softmax(scores, -1)


def test_attention_readout_equals_its_definition():
    w = _causal_rows(3, 4, 6)  # queries at positions 2..5
    rows = attention_readout([w, None, w[:2]], k=4)
    assert rows.top_pos.shape == (4, 3, 3, 4)
    for j in range(4):
        t = 2 + j
        for h in range(3):
            row = w[h, j].double().numpy()
            order = np.argsort(-row[: t + 1], kind="stable")[:4]
            m = len(order)  # position 2 sees 3 positions: the 4th slot is empty
            assert rows.top_pos[j, 0, h].tolist() == order.tolist() + [-1] * (4 - m)
            np.testing.assert_allclose(rows.top_weight[j, 0, h, :m], row[order], atol=1e-7)
            assert np.isnan(rows.top_weight[j, 0, h, m:]).all()
            p = row[: t + 1]
            np.testing.assert_allclose(rows.entropy[j, 0, h], -(p * np.log(p)).sum(), atol=1e-6)
            assert rows.sink[j, 0, h] == pytest.approx(row[0])
    # a layer without attention, and a layer with fewer heads: absent
    assert (rows.top_pos[:, 1] == -1).all() and np.isnan(rows.entropy[:, 1]).all() and np.isnan(rows.sink[:, 1]).all()
    assert (rows.top_pos[:, 2, 2] == -1).all() and np.isnan(rows.entropy[:, 2, 2]).all()
    np.testing.assert_array_equal(rows.top_pos[:, 2, :2], rows.top_pos[:, 0, :2])


def test_attention_readout_stops_at_the_causal_range():
    w = _causal_rows(1, 3, 3)  # a prefill: position 0 sees only itself
    rows = attention_readout([w], k=16)
    assert rows.top_pos.shape == (3, 1, 1, 3)  # k is cut to the positions there are
    assert rows.top_pos[0, 0, 0].tolist() == [0, -1, -1]
    assert rows.top_weight[0, 0, 0, 0] == pytest.approx(1.0) and np.isnan(rows.top_weight[0, 0, 0, 1:]).all()
    assert sorted(rows.top_pos[1, 0, 0, :2].tolist()) == [0, 1] and rows.top_pos[1, 0, 0, 2] == -1
    assert rows.entropy[0, 0, 0] == pytest.approx(0.0, abs=1e-7)
    uniform = torch.tensor([[[1 / 3, 1 / 3, 1 / 3]]])
    assert attention_readout([uniform]).entropy[0, 0, 0] == pytest.approx(math.log(3), abs=1e-6)


def test_attention_readout_full_keeps_whole_rows():
    w = _causal_rows(2, 2, 5)
    rows = attention_readout([w], k="full")
    assert rows.top_pos.shape[-1] == 5
    dense = np.zeros((2, 2, 5))
    for j in range(2):
        for h in range(2):
            ok = rows.top_pos[j, 0, h] >= 0
            dense[j, h, rows.top_pos[j, 0, h][ok]] = rows.top_weight[j, 0, h][ok]
    np.testing.assert_allclose(dense.transpose(1, 0, 2), w.numpy(), atol=1e-7)
    with pytest.raises(ValueError, match="no layer has attention"):
        attention_readout([None, None])


# -- markers on constructed arrays -----------------------------------------------------------


def _kinds(ms: list[Marker]) -> list[tuple]:
    return [(m.kind, m.token, m.layer, m.head, m.signal) for m in ms]


def test_surprise_and_entropy_spike():
    rng = np.random.default_rng(0)
    lp = -np.abs(rng.normal(0.3, 0.1, 40))
    lp[0] = np.nan  # nothing predicted position 0
    lp[17] = -6.0
    ent = np.abs(rng.normal(1.0, 0.1, 40))
    ent[0] = np.nan
    ent[25] = 4.0
    ms = find_markers(logprob=lp, entropy=ent, texts=[f"w{i}" for i in range(40)])
    assert _kinds(ms) == [("surprise", 17, None, None, None), ("entropy_spike", 25, None, None, None)]
    assert "token 17 'w17'" in ms[0].reason and "log p -6.00" in ms[0].reason
    assert ms[0].score < -3.5 < 3.5 < ms[1].score
    # the floor: a session of certain tokens does not mark a token that is merely likely
    calm = np.full(40, -0.001)
    calm[5] = -0.4  # p = 0.67
    assert find_markers(logprob=calm) == []
    assert find_markers(logprob=lp[:5]) == []  # too few values to say what is usual
    assert find_markers(logprob=lp, thresholds=Thresholds(surprise_k=1e9)) == []


def test_norm_outliers_per_layer_skip_position_zero():
    rng = np.random.default_rng(1)
    norms = rng.normal(10, 0.2, (30, 4)) * np.array([1, 2, 4, 8])  # each layer its own scale
    norms[0] *= 50  # the attention sink's massive norms: not a marker
    norms[12, 2] *= 3
    norms[20, 0] /= 4
    ms = find_markers(norms={"resid": norms})
    assert _kinds(ms) == [("norm_outlier", 12, 2, None, "resid"), ("norm_outlier", 20, 0, None, "resid")]
    assert ms[0].score > 0 > ms[1].score and "3.0" in ms[0].reason
    assert any(m.token == 0 for m in find_markers(norms={"resid": norms}, thresholds=Thresholds(norm_skip_first=False)))


def test_decision_layers_and_markers():
    top1 = np.array(
        [
            [1, 2, 3, 9, 9, 9],  # settles at layer 3
            [9, 9, 9, 9, 9, 9],  # from the start
            [9, 9, 3, 3, 9, 9],  # leaves and comes back: the last change counts
            [1, 1, 1, 1, 1, 2],  # only at the last layer
            [-1, -1, -1, -1, -1, -1],  # absent
        ]
    )
    assert decision_layers(top1).tolist() == [3, 0, 4, 5, -1]
    rows = np.tile(np.array([[1, 2, 3, 4, 5, 6, 7, 7, 7, 7]]), (20, 1))  # decided at layer 6 ...
    rows[4, 5] = 3  # a wobble before the decision does not move it
    rows[6] = 7  # ... but this one at layer 0
    rows[13, -1] = 8  # ... and this one only at the last layer
    rows[15, 7] = 1  # ... and this one at layer 8: 2 layers late is within 3.5 x the floor of 1 layer
    assert decision_layers(rows)[[0, 4, 6, 13, 15]].tolist() == [6, 6, 0, 9, 8]
    ms = find_markers(lens_top1=rows)
    assert _kinds(ms) == [("early_decision", 6, 0, None, None)]
    ms = find_markers(lens_top1=rows, thresholds=Thresholds(decision_k=2.5))
    assert _kinds(ms) == [("early_decision", 6, 0, None, None), ("late_decision", 13, 9, None, None)]


def _attention_topk(n_tok: int, n_heads: int = 2, k: int = 3):
    """Head 0 always on position 0; head 1 on the previous token (it moves every step, by design)."""
    pos = np.full((n_tok, 1, n_heads, k), -1)
    w = np.full((n_tok, 1, n_heads, k), np.nan, dtype=np.float32)
    for t in range(n_tok):
        pos[t, 0, 0, 0], w[t, 0, 0, 0] = 0, 1.0
        pos[t, 0, 1, 0], w[t, 0, 1, 0] = max(t - 1, 0), 1.0
    return pos, w


def test_attention_jump_marks_a_head_that_leaves_its_habit():
    pos, w = _attention_topk(24)
    pos[15, 0, 0, :2], w[15, 0, 0, :2] = [9, 0], [0.8, 0.2]  # head 0 suddenly looks at position 9
    jumps = attention_jumps(pos, w)
    assert np.isnan(jumps[0]).all()
    assert jumps[15, 0, 0] == pytest.approx(0.8) and jumps[16, 0, 0] == pytest.approx(0.8)
    assert jumps[2:, 0, 1].tolist() == [1.0] * 22  # the previous-token head: always a full move
    ms = find_markers(attn_pos=pos, attn_weight=w)
    assert _kinds(ms) == [("attention_jump", 15, 0, 0, None), ("attention_jump", 16, 0, 0, None)]
    assert "its top position was 0 (1.00), now 9 (0.80)" in ms[0].reason
    small = w.copy()
    small[15, 0, 0, :2] = [0.3, 0.7]  # a move below jump_min is no marker, however unusual
    pos2 = pos.copy()
    pos2[15, 0, 0, :2] = [9, 0]
    assert find_markers(attn_pos=pos2, attn_weight=small) == []


def test_markers_reads_what_a_session_holds(real_session_like):
    ms = markers(real_session_like)
    kinds = {m.kind for m in ms}
    assert kinds <= {"surprise", "entropy_spike", "norm_outlier", "early_decision", "attention_jump"}
    assert ("surprise", 10) in {(m.kind, m.token) for m in ms}
    assert any(m.kind == "early_decision" for m in ms)
    assert all(m.to_dict()["reason"] for m in ms)

    class Old:  # a session from before readouts: token table and norms only
        tokens = real_session_like.tokens
        signals = ["resid"]
        chat_only = False

        def norms(self, signal):
            return real_session_like.norms(signal)

    assert {m.kind for m in markers(Old())} <= {"surprise", "entropy_spike", "norm_outlier"}


@pytest.fixture
def real_session_like(synthetic_model):
    """A synthetic session with a planted surprise, plus lens and attention arrays."""
    import llmri

    s = llmri.capture(synthetic_model, "Why?", max_new_tokens=30, reducer="neurons")
    n = len(s.tokens)
    tokens = s.tokens
    lp = np.array(tokens.logprob, copy=True)
    lp[10] = -12.0

    class Tokens:
        logprob = lp
        entropy = tokens.entropy
        text = tokens.text

    top1 = np.tile(np.array([[1, 2, 3, 4, 5, 9]]), (n, 1))
    top1[7] = 9

    class Lens:
        top_ids = top1[..., None]

    pos, w = _attention_topk(n)

    class Attention:
        top_pos = pos
        top_weight = w

    class Like:
        signals = s.signals
        chat_only = False
        lens = Lens()

        def __init__(self):
            self.tokens = Tokens()

        def norms(self, signal):
            return s.norms(signal)

        def attention(self):
            return Attention()

    return Like()


# -- the hf backend on tiny random models of several architectures ---------------------------

_TINY = dict(vocab_size=256, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128)
# each: extra config, and what its forward does to the LM head's output
ARCHITECTURES = {
    "llama": ({"num_key_value_heads": 2}, "nothing"),
    "gemma2": ({"final_logit_softcapping": 5.0, "head_dim": 16, "num_key_value_heads": 2, "sliding_window": 4}, "tanh"),
    "cohere": ({"logit_scale": 0.25, "num_key_value_heads": 2}, "x logit_scale"),
    "granite": ({"logits_scaling": 4.0, "num_key_value_heads": 2}, "/ logits_scaling"),
    "hyperclovax": ({"logits_scaling": 2.0, "num_key_value_heads": 2}, "x logits_scaling"),
    "mpt": ({"d_model": 64, "n_layers": 3, "n_heads": 4, "logit_scale": 0.5}, "nothing (logit_scale unused)"),
    "gpt2": ({"n_embd": 64, "n_layer": 3, "n_head": 4}, "nothing (ln_f)"),
    "gpt_neox": ({}, "nothing (final_layer_norm)"),
    "opt": ({"ffn_dim": 128, "word_embed_proj_dim": 32}, "nothing (project_out after the norm)"),
    "mistral": ({"sliding_window": 4, "num_key_value_heads": 2}, "nothing (sliding window)"),
    "jamba": (
        {
            "num_experts": 2,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "expert_layer_period": 2,
            "mamba_d_state": 8,
            "mamba_expand": 2,
            "num_key_value_heads": 2,
        },
        "nothing (hybrid: layers 0 and 2 are Mamba)",
    ),
}


class _Loaded:
    """The parts of a LoadedModel the hf backend reads."""

    def __init__(self, model):
        self.model = model
        self.device = "cpu"


def _tiny(arch: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(arch, **{**_TINY, **ARCHITECTURES[arch][0]})
    return AutoModelForCausalLM.from_config(cfg).eval()


def _hook_count(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_tiny_models_lens_and_attention_against_the_model(arch):
    """At the last layer the lens is the model's logits; cached attention weights equal a
    full-sequence eager run's; the model is left as it was."""
    from llmri.backends.hf import HFBackend

    model = _tiny(arch)
    attn_before = model.config._attn_implementation
    cap = HFBackend(_Loaded(model), ["resid"])
    head = cap.lens_head()
    ids = torch.randint(0, 250, (1, 10), generator=torch.Generator().manual_seed(3))
    steps, cache = [], None
    for chunk in (ids[:, :6], ids[:, 6:7], ids[:, 7:8], ids[:, 8:10]):
        st = cap.step(chunk, cache, attention=True)
        cache = st.cache
        steps.append(st)
        assert float((head(st.acts["resid"][:, -1]) - st.logits).abs().max()) <= 1e-5
        check_lens_head(head, st.acts["resid"][:, -1], st.logits)
    assert model.config._attn_implementation == attn_before and _hook_count(model) == 0
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    with torch.inference_mode():
        want = ref(ids, output_attentions=True, use_cache=False).attentions
    have = [i for i, w in enumerate(steps[0].attn_weights) if w is not None]
    assert len(have) == len(want)
    if arch == "jamba":
        assert have == [1]
    for j, layer in enumerate(have):
        got = torch.cat(
            [torch.nn.functional.pad(s.attn_weights[layer], (0, 10 - s.attn_weights[layer].shape[-1])) for s in steps],
            1,
        )
        assert got.dtype == torch.float32
        assert float((got - want[j][0]).abs().max()) <= ATTN_ATOL


def test_logit_postprocess_by_family():
    from transformers import AutoConfig

    from llmri.backends.hf import logit_postprocess

    x = torch.tensor([[-40.0, 0.0, 3.0, 40.0]])

    def post(arch, **kw):
        fn = logit_postprocess(AutoConfig.for_model(arch, **kw))
        return None if fn is None else fn(x)

    assert post("llama") is None
    assert post("mpt", logit_scale=0.5) is None  # MPT's forward ignores it
    torch.testing.assert_close(post("gemma2", final_logit_softcapping=30.0), torch.tanh(x / 30) * 30)
    torch.testing.assert_close(post("cohere", logit_scale=0.5), x * 0.5)
    torch.testing.assert_close(post("granite", logits_scaling=4.0), x / 4)
    torch.testing.assert_close(post("hyperclovax", logits_scaling=4.0), x * 4)


def test_attention_needs_a_model_that_can_switch(monkeypatch):
    from llmri.backends.hf import HFBackend

    model = _tiny("llama")
    cap = HFBackend(_Loaded(model), ["resid"])
    monkeypatch.setattr(type(model), "set_attn_implementation", lambda self, impl: None)  # declines, as Falcon's does
    with pytest.raises(CaptureError, match="cannot switch to eager attention"):
        cap.step(torch.tensor([[1, 2, 3]]), attention=True)
    assert model.config._attn_implementation == "sdpa" and _hook_count(model) == 0


def test_attention_step_restores_the_model_when_the_forward_raises():
    from llmri.backends.hf import HFBackend

    model = _tiny("llama")
    cap = HFBackend(_Loaded(model), ["resid"])

    def boom(*_):
        assert model.config._attn_implementation == "eager"  # switched for the forward ...
        raise RuntimeError("boom")

    h = model.model.layers[1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            cap.step(torch.tensor([[1, 2, 3]]), attention=True)
    finally:
        h.remove()
    assert model.config._attn_implementation == "sdpa"  # ... and back after it
    assert model.config._attn_implementation_internal == "sdpa"
    assert _hook_count(model) == 0
    assert cap.step(torch.tensor([[1, 2, 3]])).attn_weights is None


# -- the real bundled model against Hugging Face's own run ------------------------------------

N_GEN = 6


@pytest.fixture(scope="module")
def decoded(real_model):
    """A greedy decode through the hf backend, step by step with the KV cache, attention on:
    the prompt in two chunks (the second on a non-empty cache), then ``N_GEN`` tokens."""
    from llmri.backends.hf import HFBackend

    tok = real_model.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Why is the sky blue?"}], add_generation_prompt=True, tokenize=False
    )
    prompt = tok(text)["input_ids"]
    cap = HFBackend(real_model)
    head = cap.lens_head()
    ids = list(prompt)
    steps, lens, cache = [], [], None
    chunks = [prompt[:20], prompt[20:]]
    while chunks or len(ids) < len(prompt) + N_GEN + 1:
        chunk = chunks.pop(0) if chunks else [ids[-1]]
        st = cap.step(torch.tensor([chunk]), cache, attention=True)
        cache = st.cache
        start = sum(len(s.acts["resid"]) for s in steps)
        nxt = ids[start + 1 : start + len(chunk) + 1]  # the next ids known in this step
        if start + len(chunk) >= len(ids):
            ids.append(int(st.logits[-1].argmax()))
        rows = logit_lens(st.acts["resid"], head, nxt)
        if lens and lens[-1].pending is not None:
            p, r = fill_next(lens[-1].pending, chunk[0])
            lens[-1].next_prob[-1], lens[-1].next_rank[-1] = p, r
            lens[-1].pending = None
        steps.append(st)
        lens.append(rows)
    if lens[-1].pending is not None:
        p, r = fill_next(lens[-1].pending, ids[-1])
        lens[-1].next_prob[-1], lens[-1].next_rank[-1] = p, r
    n = sum(len(s.acts["resid"]) for s in steps)
    assert n == len(prompt) + N_GEN and len(ids) == n + 1
    cat = {
        f: np.concatenate([getattr(r, f) for r in lens])
        for f in ("top_ids", "top_probs", "entropy", "next_prob", "next_rank")
    }
    return {
        "prompt": prompt,
        "ids": ids,
        "steps": steps,
        "lens": cat,
        "resid": torch.cat([s.acts["resid"] for s in steps]),
        "logits": torch.cat([s.logits for s in steps]),
        "head": head,
    }


@pytest.fixture(scope="module")
def reference(real_model, decoded):
    """Hugging Face's own run on a copy of the model: eager attention, the whole sequence at
    once, no cache, ``output_hidden_states`` and ``output_attentions``."""
    ref = copy.deepcopy(real_model.model)  # output_* installs transformers' recording hooks for good
    ref.set_attn_implementation("eager")
    ids = torch.tensor([decoded["ids"][:-1]])
    with torch.inference_mode():
        out = ref(ids, output_hidden_states=True, output_attentions=True, use_cache=False)
    return ref, out


def _max_abs(a, b) -> float:
    return float(np.nanmax(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


@pytest.mark.slow
def test_lens_matches_hidden_states_through_norm_and_lm_head(decoded, reference):
    """Every layer: HF's hidden_states[l + 1] through model.norm and lm_head by hand (the last
    layer's hidden state is HF's post-norm one, so there it is the model's logits)."""
    ref, out = reference
    lens = decoded["lens"]
    n_layers = len(out.hidden_states) - 1
    nxt = torch.tensor(decoded["ids"][1:])
    errs = {"prob": 0.0, "entropy": 0.0, "next": 0.0}
    with torch.inference_mode():
        for layer in range(n_layers):
            h = out.hidden_states[layer + 1][0]
            logits = (ref.lm_head(h) if layer == n_layers - 1 else ref.lm_head(ref.model.norm(h))).float()
            if layer == n_layers - 1:
                torch.testing.assert_close(logits, out.logits[0].float())
            logp = torch.log_softmax(logits.double(), -1)
            top_p, top_i = logp.exp().topk(5, -1)
            got_i = lens["top_ids"][:, layer]
            same = got_i == top_i.numpy()
            # a differing id is a near-tie, and then it has the same probability
            gathered = logp.exp().gather(1, torch.as_tensor(got_i)).numpy()
            np.testing.assert_allclose(gathered, top_p.numpy(), atol=PROB_ATOL)
            assert same.mean() > 0.99, f"layer {layer}: {(~same).sum()} top ids differ"
            errs["prob"] = max(errs["prob"], _max_abs(lens["top_probs"][:, layer], top_p))
            ent = -(logp.exp() * logp).sum(-1)
            errs["entropy"] = max(errs["entropy"], _max_abs(lens["entropy"][:, layer], ent))
            want_next = logp.gather(1, nxt[:, None])[:, 0].exp()
            errs["next"] = max(errs["next"], _max_abs(lens["next_prob"][:, layer], want_next))
            rank = (logits > logits.gather(1, nxt[:, None])).sum(-1).numpy()
            assert np.abs(lens["next_rank"][:, layer] - rank).max() <= 1  # a near-tie may swap
    print(f"lens vs output_hidden_states: max abs error {errs}")
    assert errs["prob"] <= PROB_ATOL and errs["next"] <= PROB_ATOL and errs["entropy"] <= 1e-4


@pytest.mark.slow
def test_lens_at_the_last_layer_is_the_model(decoded):
    """top-1 is the greedy token, next_prob is exp(log p) from the model's own logits, and the
    whole distribution is softmax(logits)."""
    lens, ids, logits = decoded["lens"], decoded["ids"], decoded["logits"]
    greedy = logits.argmax(-1).numpy()
    n_prompt = len(decoded["prompt"])
    assert (lens["top_ids"][:, -1, 0] == greedy).all()
    assert lens["top_ids"][n_prompt - 1 :, -1, 0].tolist() == ids[n_prompt:]  # the decode took them
    logp = torch.log_softmax(logits, -1)
    want = logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].exp().numpy()
    # the lens's matmul is shaped [positions x layers, d], the model's [positions, d]: float32
    # rounding differs (logits within ~1e-5)
    np.testing.assert_allclose(lens["next_prob"][:, -1], want, atol=2e-5)
    assert (lens["next_rank"][n_prompt - 1 :, -1] == 0).all()
    full = torch.softmax(decoded["head"](decoded["resid"][:, -1]), -1)
    err = float((full - torch.softmax(logits, -1)).abs().max())
    print(f"last-layer lens vs softmax(model logits): max abs error {err:.2e}")
    assert err <= 1e-5
    check_lens_head(decoded["head"], decoded["resid"][:, -1], logits)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformer-lens", "nnsight"])
def test_other_backends_give_the_same_lens(real_model, decoded, backend):
    from llmri.backends import BACKENDS

    cap = BACKENDS.get(backend)(real_model, ["resid"])
    ids = decoded["ids"]
    n = len(decoded["prompt"])
    st = cap.step(torch.tensor([ids[:n]]))
    head = cap.lens_head()
    rows = logit_lens(st.acts["resid"], head, ids[1 : n + 1])
    want = {f: v[:n] for f, v in decoded["lens"].items()}
    resid_err = float((st.acts["resid"] - decoded["resid"][:n]).abs().max())
    # its own activations: bit-equal to hf's for TransformerLens (eager attention both, the same
    # GEMM rows), ~1e-6 for nnsight (whose copy of the model keeps sdpa)
    assert resid_err < 1e-3
    same = rows.top_ids == want["top_ids"]
    assert same[..., 0].all() and same.mean() > 0.99
    err = _max_abs(rows.top_probs, want["top_probs"])
    err_next = _max_abs(rows.next_prob, want["next_prob"])
    print(f"{backend} lens vs hf: max abs error top_probs {err:.2e}, next_prob {err_next:.2e}")
    assert err <= 1e-4 and err_next <= 1e-4
    assert float((head(st.acts["resid"][:, -1]) - st.logits).abs().max()) <= LOGIT_ATOL


@pytest.mark.slow
def test_attention_matches_eager_output_attentions(real_model, decoded, reference):
    """Every layer and head, prompt positions and generated tokens (each from a cached step)."""
    _, out = reference
    steps = decoded["steps"]
    n_total = len(decoded["ids"]) - 1
    got = [
        torch.cat(
            [
                torch.nn.functional.pad(s.attn_weights[layer], (0, n_total - s.attn_weights[layer].shape[-1]))
                for s in steps
            ],
            1,
        )
        for layer in range(len(out.attentions))
    ]
    assert [tuple(s.attn_weights[0].shape) for s in steps][:3] == [
        (9, 20, 20),
        (9, len(decoded["prompt"]) - 20, len(decoded["prompt"])),
        (9, 1, len(decoded["prompt"]) + 1),
    ]
    w_err = max(float((g - a[0]).abs().max()) for g, a in zip(got, out.attentions, strict=True))
    rows = [attention_readout(s.attn_weights) for s in steps]
    top_pos = np.concatenate([r.top_pos for r in rows])
    top_w = np.concatenate([r.top_weight for r in rows])
    ent = np.concatenate([r.entropy for r in rows])
    sink = np.concatenate([r.sink for r in rows])
    ref_w = torch.stack([a[0] for a in out.attentions], 1).transpose(0, 2).double().numpy()  # [T, L, H, T]
    causal = np.arange(n_total)[None, :] <= np.arange(n_total)[:, None]
    ref_ent = -np.where(causal[:, None, None], ref_w * np.log(np.where(ref_w > 0, ref_w, 1)), 0).sum(-1)
    valid = top_pos >= 0
    # the chosen positions carry the reference's top-k weights (ties may pick other positions)
    at = np.take_along_axis(ref_w, np.where(valid, top_pos, 0), -1)
    ref_sorted = -np.sort(-np.where(causal[:, None, None], ref_w, -1), -1)[..., : top_pos.shape[-1]]
    np.testing.assert_allclose(np.where(valid, at, 0), np.where(valid, top_w, 0), atol=ATTN_ATOL)
    np.testing.assert_allclose(np.where(valid, top_w, 0), np.where(valid, ref_sorted, 0), atol=ATTN_ATOL)
    assert (valid == (ref_sorted >= 0)).all()
    ranked = np.argsort(-np.where(causal[:, None, None], ref_w, -1), -1, kind="stable")[..., : top_pos.shape[-1]]
    assert (top_pos == np.where(valid, ranked, -1)).mean() > 0.99
    errs = {"weights": w_err, "entropy": _max_abs(ent, ref_ent), "sink": _max_abs(sink, ref_w[..., 0])}
    print(f"attention vs eager output_attentions: max abs error {errs}")
    assert errs["weights"] <= ATTN_ATOL and errs["sink"] <= ATTN_ATOL and errs["entropy"] <= 1e-4
    assert real_model.model.config._attn_implementation == "sdpa"
