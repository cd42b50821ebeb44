"""The ``llama.cpp`` backend's eval callback in C (``evalcb.c``) against the Python one it replaces:
byte-identical buffers and frames (the bundled GGUF, tiny GGUFs of three architectures, prefill of
several rows, a prefill longer than one batch, decode), the same errors on real graph tensors (an
f16 cache view, a wider feed-forward tensor, a name the graph computes twice, a missing name), a
clean context after each, and the build: cached, compiled once, and a silent fallback to Python
without a compiler, where the compile fails, and with ``LLMRI_LLAMACPP_NATIVE=0``."""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat

import numpy as np
import pytest

import llmri

pytest.importorskip("llama_cpp")

from llmri.backends.llamacpp import (  # noqa: E402
    LlamaCppBackend,
    load_gguf,  # noqa: E402
    native,
)
from llmri.backends.llamacpp.ggml import ggml  # noqa: E402
from llmri.backends.llamacpp.recorder import Recorder  # noqa: E402

needs_native = pytest.mark.skipif(native.library() is None, reason="no C compiler here: the Python callback only")
TEXT = "In a quiet village by the sea, an old lighthouse keeper kept a journal of every ship that passed."


def _load(path=None, *, use_native: bool):
    """A model whose shared context has the native callback or the Python one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMRI_LLAMACPP_NATIVE", "1" if use_native else "0")
        m = load_gguf(path, n_threads=2) if path else load_gguf(n_threads=2)
        ctx = m.context()  # the variable is read here, when the context is made
    assert ctx.native == use_native
    return m


@pytest.fixture(scope="module")
def pair():
    """(Python-callback model, native-callback model) on the bundled GGUF."""
    if native.library() is None:
        pytest.skip("no C compiler here")
    py, nat = _load(use_native=False), _load(use_native=True)
    yield py, nat
    py.close()
    nat.close()


def _steps(model, ids, decode=4, signals=None):
    """A prefill of ``ids`` and ``decode`` greedy steps: every buffer a step returns, as bytes."""
    import torch

    cap = LlamaCppBackend(model, signals)
    st = cap.step(torch.tensor([ids]))
    out = [st.logits.numpy().tobytes(), *(st.acts[s].numpy().tobytes() for s in cap.signals)]
    for _ in range(decode):
        st = cap.step(torch.tensor([[int(st.logits[-1].argmax())]]), st.cache)
        out += [st.logits.numpy().tobytes(), *(st.acts[s].numpy().tobytes() for s in cap.signals)]
    assert model.context().recorder is None
    return out


@needs_native
def test_steps_are_byte_identical_on_the_bundled_gguf(pair):
    py, nat = pair
    ids = py.tokenizer(TEXT)["input_ids"]
    assert len(ids) > 10
    for signals in (None, ["resid"], ["attn", "mlp"]):
        a, b = _steps(py, ids, signals=signals), _steps(nat, ids, signals=signals)
        assert len(a) == len(b) and all(x == y for x, y in zip(a, b, strict=True)), signals


@needs_native
def test_a_prefill_longer_than_one_batch_is_byte_identical(pair):
    """600 positions: two decodes (512 + 88 rows), the second written from row 512 on."""
    py, nat = pair
    ids = (py.tokenizer(TEXT * 30)["input_ids"])[:600]
    assert len(ids) == 600 and py.context().n_batch == 512
    a, b = _steps(py, ids, decode=1), _steps(nat, ids, decode=1)
    assert all(x == y for x, y in zip(a, b, strict=True))


@needs_native
def test_captured_frames_are_byte_identical(pair, tmp_path):
    py, nat = pair
    kw = {"max_new_tokens": 6, "ignore_eos": True, "reducer": "random", "backend": "llama.cpp"}
    a = llmri.capture(py, TEXT, **kw)
    b = llmri.capture(nat, TEXT, store=tmp_path / "s.zarr", **kw)
    back = llmri.open_store(tmp_path / "s.zarr").session(b.id)
    assert a.tokens.ids.tolist() == b.tokens.ids.tolist() == back.tokens.ids.tolist()
    for sig in llmri.SIGNALS:
        assert a.frames(sig).tobytes() == b.frames(sig).tobytes() == back.frames(sig).tobytes(), sig
    np.testing.assert_array_equal(a.tokens.logprob, b.tokens.logprob)


@needs_native
def test_the_frame_thread_is_on_with_the_native_callback_and_changes_no_byte(pair, monkeypatch, tmp_path):
    """llama_decode holds no GIL with the compiled callback, so the frame thread is on by default
    there when llama.cpp's threads leave a core free (off with the Python callback, and where they
    take every core); ``LLMRI_FRAME_THREAD`` overrides either way."""
    from llmri.backends.llamacpp import backend

    py, nat = pair
    assert nat.n_threads == 2
    monkeypatch.setattr(backend, "available_cores", lambda: 2)
    assert not LlamaCppBackend(nat).frame_thread  # both cores are llama.cpp's
    monkeypatch.setattr(backend, "available_cores", lambda: 8)

    def thread(model) -> bool:
        st = llmri.stream(model, TEXT, backend="llama.cpp", max_new_tokens=1)
        try:
            return st.frames.thread
        finally:
            st.close()

    monkeypatch.delenv("LLMRI_FRAME_THREAD", raising=False)
    assert thread(nat) and not thread(py)
    kw = {"max_new_tokens": 6, "ignore_eos": True, "reducer": "random", "backend": "llama.cpp"}
    on = llmri.capture(nat, TEXT, store=tmp_path / "s.zarr", **kw)
    monkeypatch.setenv("LLMRI_FRAME_THREAD", "0")
    assert not thread(nat)
    off = llmri.capture(nat, TEXT, **kw)
    for sig in llmri.SIGNALS:
        assert on.frames(sig).tobytes() == off.frames(sig).tobytes(), sig
        assert on.norms(sig).tobytes() == off.norms(sig).tobytes(), sig
    assert on.tokens.ids.tolist() == off.tokens.ids.tolist()
    np.testing.assert_array_equal(on.tokens.logprob, off.tokens.logprob)
    monkeypatch.setenv("LLMRI_FRAME_THREAD", "1")
    assert thread(py)


@needs_native
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma"])
def test_tiny_ggufs_are_byte_identical(model_type, tmp_path):
    """``attn_out`` named (llama), derived from ``ffn_inp`` and ``embd`` (qwen2) or ``sa_out`` (gemma):
    the internal buffers, one of them a single layer, filled the same way."""
    pytest.importorskip("gguf")
    import gguf_tiny

    path = gguf_tiny.write_gguf(gguf_tiny.tiny_hf(model_type), tmp_path / f"tiny-{model_type}.gguf")
    py, nat = _load(str(path), use_native=False), _load(str(path), use_native=True)
    try:
        ids = py.tokenizer(TEXT)["input_ids"]
        for signals in (None, ["attn"]):
            a, b = _steps(py, ids, signals=signals), _steps(nat, ids, signals=signals)
            assert all(x == y for x, y in zip(a, b, strict=True)), (model_type, signals)
        assert ("attn" in nat.derived) == (model_type != "llama")
    finally:
        py.close()
        nat.close()


# -- errors: the same messages, and nothing left on the context ---------------------------------


def _record(model, names, *, rows=3, decodes=1, d=None, in_c=True):
    """Decode ``rows`` positions ``decodes`` times under one recorder wanting ``names`` (one buffer
    each, one layer), restarting it only before the first: (buffers as bytes, seen, error)."""
    ctx = model.context()
    slots = {n.encode(): (k, 0) for k, n in enumerate(names)}
    rec = Recorder(ggml(), slots, len(names), rows * decodes, 1, d or model.d_model)
    for b in rec.bufs:
        b.fill(np.nan)  # what was not written stays NaN on both paths
    with ctx.lock:
        ctx.reset()
        try:
            with ctx.recording(rec):
                rec.start(0, rows)
                assert ctx._native is None or ctx._native.native == in_c  # C answers, or hands to Python
                for i in range(decodes):
                    ctx.decode(list(range(10 + rows * i, 10 + rows * (i + 1))))
        finally:
            ctx.reset()
    assert ctx.recorder is None
    if ctx._native is not None:
        s = ctx._native.state
        assert (s.mode, s.bases, s.scratch, s.rows) == (native.MODE_IDLE, None, None, 0)
    error = None if rec.error is None else str(rec.error)
    return [b.tobytes() for b in rec.bufs], sorted(n.decode() for n in rec.seen), error


@needs_native
@pytest.mark.parametrize(
    ("names", "decodes", "message"),
    [
        (
            ["l_out-0", "cache_k_l0 (view)", "l_out-5"],
            1,
            r"tensor cache_k_l0 \(view\) is f16 \[192, \d+, 1, 1\], expected f32 \[576, 3, 1, 1\]",
        ),
        (
            ["ffn_gate-2", "l_out-29"],
            1,
            r"tensor ffn_gate-2 is f32 \[1536, 3, 1, 1\], expected f32 \[576, 3, 1, 1\] with contiguous rows",
        ),
        (["l_out-3", "norm-0"], 1, "tensor norm-0 appears twice in one graph"),
        (["l_out-0", "ffn_out-1"], 2, "tensor l_out-0 appears twice in one graph"),  # not restarted between decodes
        (["l_out-0", "no_such_tensor-0", "ffn_out-29"], 1, None),
    ],
)
def test_errors_and_missing_tensors_are_the_same(pair, names, decodes, message):
    py, nat = pair
    a, b = _record(py, names, decodes=decodes), _record(nat, names, decodes=decodes)
    assert a[1:] == b[1:]
    assert a[0] == b[0]  # what was copied before the error (and nothing after) is the same
    if message is None:
        assert a[2] is None and set(names) - set(a[1]) == {"no_such_tensor-0"}
    else:
        assert a[2] is not None and re.search(message, a[2]), a[2]
        assert a[2].startswith("llama.cpp: ")


@needs_native
def test_a_shape_error_in_a_step_leaves_the_context_clean(pair):
    """The recorder's ``d`` wrong: the first tensor refused, every later one declined, the step's
    positions dropped, the state unbound; the next capture is the same as before."""
    _, nat = pair
    ids = nat.tokenizer(TEXT)["input_ids"][:8]
    before = _steps(nat, ids, decode=1)
    bufs, seen, error = _record(nat, ["l_out-0", "l_out-1"], d=nat.d_model + 1)
    assert error == "llama.cpp: tensor l_out-0 is f32 [576, 3, 1, 1], expected f32 [577, 3, 1, 1] with contiguous rows"
    assert seen == [] and all(np.isnan(np.frombuffer(b, dtype=np.float32)).all() for b in bufs)
    assert nat.context().n_past == 0 and _steps(nat, ids, decode=1) == before


@needs_native
def test_a_signal_during_a_native_decode_is_raised_after_it_and_leaves_the_context_clean(pair):
    """Python runs nothing inside a native decode: a signal's handler (Ctrl-C's, here SIGUSR1's) raises
    once ``llama_decode`` returns; the step's positions are dropped and the state unbound."""
    import signal
    import threading
    import time

    import torch

    _, nat = pair
    ids = nat.tokenizer(TEXT * 30)["input_ids"][:600]
    ref = _steps(nat, ids[:8], decode=1)
    cap, state = LlamaCppBackend(nat), nat.context()._native.state

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop

    def fire():  # once the first 512-row decode is under way
        deadline = time.monotonic() + 60
        while state.rows != 512 and time.monotonic() < deadline:
            time.sleep(0.0005)
        os.kill(os.getpid(), signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, handler)
    thread = threading.Thread(target=fire)
    try:
        thread.start()
        with pytest.raises(Stop):
            cap.step(torch.tensor([ids]))
    finally:
        thread.join()
        signal.signal(signal.SIGUSR1, old)
    ctx = nat.context()
    assert ctx.recorder is None and state.mode == native.MODE_IDLE and ctx.n_past == 0
    assert _steps(nat, ids[:8], decode=1) == ref


@needs_native
def test_early_stop_leaves_the_native_state_unbound(pair):
    _, nat = pair
    with llmri.stream(nat, TEXT, max_new_tokens=12, ignore_eos=True, reducer="neurons") as st:
        for i, _frame in enumerate(st):
            if i == 2:
                break
    ctx = nat.context()
    assert ctx.recorder is None and ctx._native.state.mode == native.MODE_IDLE and not ctx._native.native


@needs_native
def test_a_recorder_with_a_replaced_method_runs_through_python(pair, monkeypatch):
    """evalcb.c reimplements Recorder's methods as they are; a replaced one (tests do it) is called."""
    _, nat = pair
    calls = []
    real = Recorder.computed

    def counting(self, t):
        calls.append(t)
        return real(self, t)

    monkeypatch.setattr(Recorder, "computed", counting)
    _, seen, error = _record(nat, ["l_out-0", "l_out-1"], in_c=False)
    assert error is None and seen == ["l_out-0", "l_out-1"] and len(calls) == 2


# -- building and loading -------------------------------------------------------------------------


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache directory, and ``native.library()`` forgotten before and after."""
    monkeypatch.setenv("LLMRI_CACHE", str(tmp_path / "cache"))
    native.library.cache_clear()
    yield tmp_path / "cache" / "native"
    native.library.cache_clear()


@needs_native
def test_the_library_is_built_once_into_a_private_cache_and_reused(fresh):
    first = native.build()
    assert first is not None and first.parent == fresh and first.name.startswith("llmri-evalcb-")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    st = first.stat()
    again = native.build()
    assert again == first and (again.stat().st_ino, again.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert os.listdir(fresh) == [first.name]  # no temporary file left
    assert native.library() is not None and native.library() is native.library()
    with load_gguf(n_threads=1) as m:
        assert m.context().native
    assert os.listdir(fresh) == [first.name]


def test_without_a_compiler_the_python_callback_runs(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CC", str(fresh.parent / "no-such-cc"))
    with caplog.at_level(logging.DEBUG, logger="llmri.llamacpp"):
        with load_gguf(n_threads=1) as m:
            assert not m.context().native
            s = llmri.capture(m, TEXT, max_new_tokens=2, reducer="neurons")
            assert s.tokens.role.count("generated") == 2
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "no C compiler" in caplog.records[0].getMessage()
    assert not fresh.exists() or not os.listdir(fresh)


def test_a_failing_compile_falls_back_and_leaves_no_file(fresh, monkeypatch, caplog):
    false = shutil.which("false")
    if false is None:
        pytest.skip("no false(1) here")
    monkeypatch.setenv("CC", false)
    with caplog.at_level(logging.DEBUG, logger="llmri.llamacpp"):
        assert native.library() is None
        with load_gguf(n_threads=1) as m:
            assert not m.context().native
    assert len(caplog.records) == 1 and "failed" in caplog.records[0].getMessage()
    assert os.listdir(fresh) == []


def test_a_cache_others_can_write_is_not_used(fresh):
    fresh.mkdir(parents=True)
    fresh.chmod(0o777)
    assert native.build() is None and os.listdir(fresh) == []


@needs_native
def test_the_variable_forces_python(monkeypatch):
    monkeypatch.setenv("LLMRI_LLAMACPP_NATIVE", "0")
    assert not native.enabled()
    with load_gguf(n_threads=1) as m:
        assert not m.context().native
    monkeypatch.setenv("LLMRI_LLAMACPP_NATIVE", "1")
    with load_gguf(n_threads=1) as m:
        assert m.context().native
