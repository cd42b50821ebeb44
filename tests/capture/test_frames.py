"""The frame pipeline (:mod:`llmri.stepframes`): a deferred step, whose frames are built only after
the next forward has been queued (what a CUDA capture does), gives byte-identical frames, stops at
the same token, and keeps what came before an error, as the inline pipeline the CPU uses."""

from __future__ import annotations

import numpy as np
import pytest

import llmri
from helpers import tiny_model
from llmri.models import LoadedModel

PROMPT = "Why is the sky blue? Because"


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return tiny_model()


def _run(model, defer: bool | str, *, fail_at: int | None = None, **kw):
    """``defer``: False (inline), True (deferred, as on CUDA) or "thread" (the CPU frame thread)."""
    kw.setdefault("max_new_tokens", 8)
    kw.setdefault("ignore_eos", True)
    s = llmri.stream(model, PROMPT, chat=False, **kw)
    s.frames.defer = defer is True
    s.frames.thread = defer == "thread"
    if fail_at is not None:
        real, calls = s.backend.step, [0]

        def step(*a, **k):
            calls[0] += 1
            if calls[0] == fail_at:
                raise RuntimeError("forward failed")
            return real(*a, **k)

        s.backend.step = step
    frames = []
    try:
        for f in s:
            frames.append(f)
    except RuntimeError:
        assert fail_at is not None
    return frames, s


def _bytes(frame) -> dict:
    out = {"token": frame.token.to_dict()}
    for kind in ("tiles", "norms", "sparsity"):
        out[kind] = {s: np.ascontiguousarray(v).tobytes() for s, v in getattr(frame, kind).items()}
    for kind in ("lens", "attention"):
        row = getattr(frame, kind)
        out[kind] = (
            None if row is None else {k: np.asarray(v).tobytes() for k, v in vars(row).items() if k != "top_text"}
        )
    return out


def _same(a, b) -> None:
    assert len(a) == len(b)
    for fa, fb in zip(a, b, strict=True):
        assert _bytes(fa) == _bytes(fb), fa.index


@pytest.mark.parametrize("mode", [True, "thread"], ids=["deferred", "thread"])
@pytest.mark.parametrize(
    "readouts", [{}, {"lens": True}, {"lens": True, "attention": True}], ids=["plain", "lens", "both"]
)
def test_deferred_frames_are_byte_identical(tiny, readouts, mode):
    inline, _ = _run(tiny, False, **readouts)
    deferred, s = _run(tiny, mode, **readouts)
    assert s.frames._pool is None  # the frame thread ended with the stream
    _same(inline, deferred)
    assert s.stop_reason == "max_new_tokens"
    if readouts:  # the last frame has no next token, every other one has
        assert np.isnan(deferred[-1].lens.next_prob).all()
        assert not np.isnan(deferred[-2].lens.next_prob).any()


def test_deferred_stop_string_stops_at_the_same_token(tiny):
    full, _ = _run(tiny, False, max_new_tokens=12)
    text = "".join(f.token.text for f in full if f.token.role == "generated")
    stop = text[3:5]
    assert stop.strip(), text
    inline, a = _run(tiny, False, max_new_tokens=12, stop=stop)
    deferred, b = _run(tiny, True, max_new_tokens=12, stop=stop)
    _same(inline, deferred)
    assert a.stop_reason == b.stop_reason == "stop_string"


@pytest.mark.parametrize("mode", [True, "thread"], ids=["deferred", "thread"])
@pytest.mark.parametrize("lens", [False, True])
def test_deferred_error_keeps_what_came_before(tiny, tmp_path, lens, mode):
    store = llmri.open_store(tmp_path / "s.zarr", create=True)
    inline, _ = _run(tiny, False, fail_at=4, lens=lens)
    deferred, s = _run(tiny, mode, fail_at=4, lens=lens, store=store)
    _same(inline, deferred)
    assert s.stop_reason.startswith("error: RuntimeError")
    reader = llmri.open_store(tmp_path / "s.zarr").session(s.session_id)
    assert len(reader) == len(deferred) and reader.meta["status"] == "interrupted"
    assert reader.tokens.ids.tolist() == [f.token.id for f in deferred]


@pytest.mark.parametrize("mode", [True, "thread"], ids=["deferred", "thread"])
def test_real_model_deferred_frames_are_byte_identical(real_model, mode):
    inline, _ = _run(real_model, False, max_new_tokens=4)
    deferred, _ = _run(real_model, mode, max_new_tokens=4)
    _same(inline, deferred)


# -- the readouts' cheaper paths ----------------------------------------------------------------


def _close(a, b) -> None:
    """The same frames, the lens computed in other batches: tiles and tokens byte for byte, the lens
    within float32 rounding (a matmul of more rows may sum in another order)."""
    assert [f.token.to_dict() for f in a] == [f.token.to_dict() for f in b]
    for fa, fb in zip(a, b, strict=True):
        assert _bytes(fa)["tiles"] == _bytes(fb)["tiles"] and _bytes(fa)["attention"] == _bytes(fb)["attention"]
        la, lb = fa.lens, fb.lens
        assert (la.top_ids == lb.top_ids).all() and (la.next_rank == lb.next_rank).all(), fa.index
        assert (la.top_text == lb.top_text).all()
        for name in ("top_probs", "next_prob", "entropy"):
            np.testing.assert_allclose(getattr(lb, name), getattr(la, name), atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("batch", [2, 5])
def test_lens_batch_changes_when_frames_come_not_what_they_hold(tiny, batch):
    """``lens_batch``: a frame waits for its batch (at most ``batch`` forwards after its own),
    and holds what one position at a time gives."""
    one, _ = _run(tiny, False, lens=True, attention=True, max_new_tokens=12)
    s = llmri.stream(
        tiny, PROMPT, chat=False, lens=True, attention=True, max_new_tokens=12, ignore_eos=True, lens_batch=batch
    )
    real, forwards = s.backend.step, [0]

    def step(*a, **k):
        forwards[0] += 1
        return real(*a, **k)

    s.backend.step = step
    got, seen = [], []
    for f in s:
        got.append(f)
        seen.append(forwards[0])
    _close(one, got)
    n_prompt = sum(f.token.role == "prompt" for f in got)
    own = [1 if i < n_prompt else i - n_prompt + 2 for i in range(len(got))]  # the forward that computed it
    waits = [a - b for a, b in zip(seen, own, strict=True)]
    assert max(waits[:-1]) == batch and min(waits[n_prompt:-1]) >= 1, waits
    assert np.isnan(got[-1].lens.next_prob).all() and not np.isnan(got[-2].lens.next_prob).any()


def test_capture_computes_the_lens_eight_positions_at_a_time(tiny):
    from llmri.capture.readouts import CAPTURE_LENS_BATCH

    s = llmri.stream(tiny, PROMPT, chat=False, lens=True)
    assert s.readouts.queue.batch == 1 and CAPTURE_LENS_BATCH == 8
    a = llmri.capture(tiny, PROMPT, chat=False, max_new_tokens=20, ignore_eos=True, lens=True)
    b = llmri.capture(tiny, PROMPT, chat=False, max_new_tokens=20, ignore_eos=True, lens=True, lens_batch=1)
    la, lb = a.lens(), b.lens()
    assert (la.top_ids == lb.top_ids).all() and (la.next_rank == lb.next_rank).all()
    np.testing.assert_allclose(la.next_prob, lb.next_prob, atol=1e-6, equal_nan=True)
    with pytest.raises(llmri.CaptureError, match="lens_batch must be a whole number >= 1, got 0"):
        llmri.stream(tiny, PROMPT, chat=False, lens=True, lens_batch=0)


@pytest.mark.parametrize("mode", [False, True], ids=["inline", "deferred"])
def test_lens_batch_error_keeps_every_frame_whose_next_token_is_known(tiny, tmp_path, mode):
    store = llmri.open_store(tmp_path / "s.zarr", create=True)
    one, _ = _run(tiny, False, fail_at=7, lens=True)
    batched, s = _run(tiny, mode, fail_at=7, lens=True, lens_batch=4, store=store)
    _close(one, batched)
    assert len(batched) == len(one) > 0 and not np.isnan(batched[-1].lens.next_prob).any()
    reader = llmri.open_store(tmp_path / "s.zarr").session(s.session_id)
    assert len(reader) == len(batched) and reader.meta["status"] == "interrupted"


def test_lens_in_bfloat16_is_close_to_the_exact_lens(tiny):
    exact = llmri.capture(tiny, PROMPT, chat=False, max_new_tokens=6, ignore_eos=True, lens=True)
    fast = llmri.capture(tiny, PROMPT, chat=False, max_new_tokens=6, ignore_eos=True, lens=True, lens_dtype="bfloat16")
    assert fast.meta["lens"]["dtype"] == "bfloat16" and "dtype" not in exact.meta["lens"]
    a, b = exact.lens(), fast.lens()
    assert fast.tokens.ids.tolist() == exact.tokens.ids.tolist()  # the lens never changes the answer
    np.testing.assert_allclose(b.top_probs, a.top_probs, atol=3e-2)
    np.testing.assert_allclose(b.next_prob[:-1], a.next_prob[:-1], atol=3e-2)
    np.testing.assert_allclose(b.entropy, a.entropy, atol=5e-2)


def test_lens_dtype_is_checked(tiny):
    with pytest.raises(llmri.CaptureError, match="lens_dtype"):
        llmri.stream(tiny, PROMPT, chat=False, lens=True, lens_dtype="int8")


def test_attention_switch_memo_restores_the_model(tiny):
    """The cheap eager switch (written from the first switch's settings) leaves the model as it was."""
    before = tiny.model.config._attn_implementation
    for _ in range(2):
        s = llmri.capture(tiny, PROMPT, chat=False, max_new_tokens=3, ignore_eos=True, attention=True)
        assert s.attention().top_pos.shape[0] == len(s)
        assert tiny.model.config._attn_implementation == before


@pytest.mark.parametrize("vocab", [49152, 49157, 300])
def test_blockwise_topk_is_topk(vocab):
    import torch

    from llmri.readouts.lens import topk_rows

    g = torch.Generator().manual_seed(vocab)
    x = torch.randn(40, vocab, generator=g) * 4
    x[3, -2] = 100.0  # a top entry in the columns after the last whole block
    x[5, :] = 1.0  # all equal
    x[7, 1000 % vocab] = x[7, 5] = 50.0  # a tie across blocks
    want_v, want_i = x.topk(5, dim=-1)
    got_v, got_i = topk_rows(x, 5)
    assert torch.equal(got_v, want_v)
    assert torch.equal(x.gather(1, got_i), want_v)  # the ids point at those values
    same = (got_i == want_i).all(-1)
    assert same[[r for r in range(40) if r not in (5, 7)]].all()
