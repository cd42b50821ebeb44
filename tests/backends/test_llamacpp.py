"""The ``llama.cpp`` backend on the bundled GGUF: the codec, the step contract, clean failures, and
faithfulness to the ``hf`` backend on the same file (``llmri.load_model()`` is its dequantised copy).

llama.cpp quantises the activations entering each quantised matmul (Q8_1 for this Q4_1 file), so the
two backends agree closely, not exactly. Measured (x86-64, 2 threads, flash attention off, llmri's
default), teacher-forced on the same 68 ids (the chat prompt and hf's 32 greedy tokens), cosine of the
full d_model vectors per (token, layer): resid min 0.9980 (mean 0.99978), attn min 0.9928 (mean
0.99904), mlp min 0.9954 (mean 0.99913); the lowest at the system prompt's last tokens (17-19) in late
layers (29, 26, 15). Greedy decoding leaves the hf path only at near ties (top-2 probabilities within
0.04 of each other): see ``test_greedy_tokens_follow_hf``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import llmri
from llmri._errors import CaptureError, MissingExtraError

pytest.importorskip("llama_cpp")

from llmri.backends.llamacpp import (  # noqa: E402
    GGUFModel,
    LlamaCache,
    LlamaCppBackend,
    load_gguf,  # noqa: E402
)
from llmri.backends.llamacpp import backend as lc_backend  # noqa: E402
from llmri.backends.llamacpp.recorder import Recorder  # noqa: E402

PROMPT = [{"role": "user", "content": "Why is the sky blue?"}]
#: Cosine of llama.cpp's activations (Q4_1 kernels) against hf's on the dequantised copy, per token and
#: layer: the lowest of ~6,000 and the mean. The lowest depends on the CPU's kernels: attn 0.9928 with
#: AVX-512, 0.9892 on an AVX2-only EPYC (both at one token of one late layer); the means are 0.999
#: on both (docs/backends.md).
COS_MIN = 0.985
COS_MEAN = 0.998


@pytest.fixture(scope="module")
def gguf():
    m = load_gguf(n_threads=2)
    yield m
    m.close()


def _ids(model, messages=PROMPT):
    return model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)


def _t(ids):
    import torch

    return torch.tensor([ids], dtype=torch.long)


def _cos(a, b):
    """Cosine per (token, layer) of two ``[n, L, d]`` arrays, in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


# -- the model and its codec --------------------------------------------------------------------


def test_registered_and_llama_cpp_imported_only_when_chosen():
    assert "llama.cpp" in llmri.backends.BACKENDS
    code = "import sys, llmri, llmri.backends; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'llmri\[llamacpp\]'"):
        load_gguf()


def test_describe_records_name_quantisation_and_a_cached_fingerprint(gguf):
    d = gguf.describe()
    assert d["name"] == "SmolLM2-135M-Instruct" and d["format"] == "gguf"
    assert d["quantization"] == "Q4_1" and d["architecture"] == "llama"
    assert (d["n_layers"], d["d_model"]) == (30, 576)
    assert len(d["fingerprint"]) == 16
    from llmri.models.identity import gguf_fingerprint

    assert gguf_fingerprint(__import__("pathlib").Path(gguf.path)) == d["fingerprint"]


def test_bad_specs_are_one_line_errors(tmp_path):
    with pytest.raises(llmri.ModelLoadError, match="no such file"):
        load_gguf(tmp_path / "nope.gguf")
    (tmp_path / "x.bin").write_bytes(b"x")
    with pytest.raises(llmri.ModelLoadError, match="not a .gguf file"):
        load_gguf(tmp_path / "x.bin")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(llmri.ModelLoadError, match="cannot load"):
        load_gguf(tmp_path / "bad.gguf")


def test_an_ollama_blob_loads_by_its_digest_name(tmp_path):
    """Ollama keeps GGUFs as ``blobs/sha256-<hex>`` without a suffix: the model takes its ``general.name``."""
    blob = tmp_path / ("sha256-" + "ab" * 32)
    blob.symlink_to(gguf_default_path())
    with load_gguf(blob, n_threads=1) as m:
        assert m.name == m.gguf_name == "Smollm2 135M 8k Lc100K Mix1 Ep2"
        assert m.describe()["quantization"] == "Q4_1"


def test_a_model_that_is_not_gguf_is_refused(synthetic_model):
    with pytest.raises(CaptureError, match="runs a GGUF file"):
        LlamaCppBackend(synthetic_model)


@pytest.mark.slow
@pytest.mark.parametrize(
    "messages",
    [
        PROMPT,
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi! ünïcödé 日本語 🚀"}],
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3 ?\n\nTabs\there,   spaces."},
        ],
    ],
)
def test_chat_template_renders_and_tokenizes_as_hf(gguf, real_model, messages):
    hf = real_model.tokenizer
    for gen in (True, False):
        text = gguf.tokenizer.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
        assert text == hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
        ids = gguf.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == hf(text, add_special_tokens=False)["input_ids"]
        assert gguf.tokenizer.decode(ids) == hf.decode(ids, skip_special_tokens=False)


@pytest.mark.slow
def test_raw_text_tokenizes_and_decodes_as_hf(gguf, real_model):
    """The same ids, but for one known case (docs/backends.md): a run of spaces before a digit is one
    token in llama.cpp's ``smollm`` pre-tokenizer (``"x  3"``: ``ĠĠ 3``), two in transformers' (``Ġ Ġ 3``)."""
    hf = real_model.tokenizer
    for text in ("Hello world", "  leading spaces and\nnewlines\n\n", "naïve café — 東京 🙂", "<|im_start|>user"):
        ids = gguf.tokenizer(text)["input_ids"]
        assert ids == hf(text)["input_ids"], text
        assert gguf.tokenizer.decode(ids) == hf.decode(ids, skip_special_tokens=False)
    # a byte-level piece that is half a character decodes to the replacement character, as in hf
    emoji = gguf.tokenizer("🙂")["input_ids"]
    assert len(emoji) > 1 and gguf.tokenizer.decode(emoji[:1]).endswith("\ufffd")


# -- the step contract --------------------------------------------------------------------------


def test_step_shapes_dtypes_and_cache(gguf):
    import torch

    cap = LlamaCppBackend(gguf)
    ids = _ids(gguf)
    st = cap.step(_t(ids))
    assert st.logits.dtype == torch.float32 and tuple(st.logits.shape) == (len(ids), gguf.tokenizer.vocab_size)
    for sig in llmri.SIGNALS:
        assert st.acts[sig].dtype == torch.float32 and tuple(st.acts[sig].shape) == (len(ids), 30, 576)
    assert isinstance(st.cache, LlamaCache) and st.cache.n_past == len(ids)
    nxt = cap.step(_t([int(st.logits[-1].argmax())]), st.cache, logits=False)
    assert nxt.logits is None and nxt.cache.n_past == len(ids) + 1
    assert tuple(nxt.acts["resid"].shape) == (1, 30, 576)
    assert cap.layer_names[0] == "blk.0" and cap.n_layers == 30 and cap.d_model == 576


def test_returned_buffers_are_the_callers(gguf):
    """Each step's logits and activations are new memory: the next step leaves them alone."""
    cap = LlamaCppBackend(gguf, ["resid"])
    a = cap.step(_t(_ids(gguf)))
    logits, resid = a.logits.clone(), a.acts["resid"].clone()
    cap.step(_t([504]), a.cache)
    assert bool((a.logits == logits).all()) and bool((a.acts["resid"] == resid).all())


def test_chunked_prefill_matches_one_batch(gguf):
    cap = LlamaCppBackend(gguf)
    ids = _ids(gguf)
    whole = cap.step(_t(ids))
    first = cap.step(_t(ids[:7]))
    rest = cap.step(_t(ids[7:]), first.cache)
    for sig in llmri.SIGNALS:
        got = np.concatenate([first.acts[sig].numpy(), rest.acts[sig].numpy()])
        assert _cos(got, whole.acts[sig].numpy()).min() > 0.999, sig
    assert int(rest.logits[-1].argmax()) == int(whole.logits[-1].argmax())


def test_attn_and_mlp_add_up_to_the_residual_stream(gguf):
    """``l_out-N = l_out-(N-1) + attn_out-N + ffn_out-N``: the three are the block's own parts."""
    st = LlamaCppBackend(gguf).step(_t(_ids(gguf)))
    r, a, m = (st.acts[s].double().numpy() for s in ("resid", "attn", "mlp"))
    np.testing.assert_allclose(r[:, 1:], r[:, :-1] + a[:, 1:] + m[:, 1:], rtol=1e-4, atol=1e-3)


def test_a_stale_cache_is_refused(gguf):
    cap = LlamaCppBackend(gguf, ["resid"])
    a = cap.step(_t([1, 2, 3]))
    cap.step(_t([4, 5]))  # another sequence on the shared context
    with pytest.raises(CaptureError, match="stale"):
        cap.step(_t([6]), a.cache)


def test_a_signal_whose_tensor_is_missing_is_refused(monkeypatch):
    monkeypatch.setitem(lc_backend.TENSORS_BY_ARCH, "llama", {"attn": "no_such_tensor"})
    with load_gguf(n_threads=2) as model:  # a fresh model: the probe runs again
        with pytest.raises(CaptureError, match=r"no mapping for signal 'attn' in architecture 'llama'"):
            LlamaCppBackend(model)
        assert set(LlamaCppBackend(model, ["resid", "mlp"]).signals) == {"resid", "mlp"}
        assert model.context().recorder is None


# -- failures leave the context clean -----------------------------------------------------------


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_inside_the_callback_is_raised_after_the_decode(gguf, monkeypatch, exc):
    cap = LlamaCppBackend(gguf)
    ids = _ids(gguf)
    good = cap.step(_t(ids))
    ref = cap.step(_t([504]), good.cache)
    good = cap.step(_t(ids))
    real = Recorder.computed
    calls = {"n": 0}

    def flaky(self, t):
        calls["n"] += 1
        if calls["n"] == 40:
            raise exc
        return real(self, t)

    monkeypatch.setattr(Recorder, "computed", flaky)
    with pytest.raises(type(exc)):
        cap.step(_t([504]), good.cache)
    monkeypatch.setattr(Recorder, "computed", real)
    ctx = gguf.context()
    assert ctx.recorder is None and ctx.n_past == len(ids)  # no callback state, the failed position dropped
    again = cap.step(_t([504]), good.cache)  # the context goes on from where the good step left it
    np.testing.assert_allclose(again.logits.numpy(), ref.logits.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(again.acts["resid"].numpy(), ref.acts["resid"].numpy(), rtol=1e-5, atol=1e-4)


def test_early_stop_leaves_the_context_usable(gguf):
    kw = {"max_new_tokens": 12, "ignore_eos": True, "reducer": "neurons", "backend": "llama.cpp"}
    with llmri.stream(gguf, PROMPT, **kw) as st:
        for i, _frame in enumerate(st):
            if i == 3:
                break
    assert gguf.context().recorder is None
    s = llmri.capture(gguf, PROMPT, **kw)
    again = llmri.capture(gguf, PROMPT, **kw)
    assert s.tokens.ids.tolist() == again.tokens.ids.tolist()
    np.testing.assert_array_equal(s.frames("attn"), again.frames("attn"))


def test_capture_into_a_zarr_store_records_the_gguf(gguf, tmp_path):
    s = llmri.capture(gguf, PROMPT, max_new_tokens=6, store=tmp_path / "s.zarr")
    back = llmri.open_store(tmp_path / "s.zarr").session(s.id)
    assert back.status == "complete" and back.meta["backend"] == "llama.cpp"
    model = back.meta["model"]
    assert model["quantization"] == "Q4_1" and model["fingerprint"] == gguf.fingerprint
    assert model["gguf_name"] and model["format"] == "gguf"
    assert back.frames("resid").shape[:2] == (len(back.tokens), 30)
    gen = [i for i, r in enumerate(back.tokens.role) if r == "generated"]
    assert len(gen) == 6 and all(np.isfinite(back.tokens.logprob[i]) for i in gen)
    assert back.tokens.entropy[1] >= 0 and len(back.tokens[1].top_ids) == 5


# -- faithful to hf on the same GGUF ------------------------------------------------------------


@pytest.mark.slow
def test_teacher_forced_activations_match_hf(gguf, real_model):
    from llmri.backends.hf import HFBackend

    ids = _ids(gguf)
    hf = HFBackend(real_model)
    cont = llmri.capture(real_model, PROMPT, max_new_tokens=32, ignore_eos=True, reducer="neurons")
    full = cont.tokens.ids.tolist()
    assert full[: len(ids)] == ids
    a = LlamaCppBackend(gguf).step(_t(full))
    b = hf.step(_t(full))
    report = {}
    for sig in llmri.SIGNALS:
        cos = _cos(a.acts[sig].numpy(), b.acts[sig].float().numpy())  # [n, L]
        tok, layer = np.unravel_index(cos.argmin(), cos.shape)
        report[sig] = (round(float(cos.min()), 4), round(float(cos.mean()), 5), int(tok), int(layer))
        assert cos.min() >= COS_MIN and cos.mean() >= COS_MEAN, report
        assert cos.min(axis=0).shape == (30,)
    print("cosine min, mean, (token, layer) of the min:", report)
    top_a, top_b = a.logits.argmax(-1), b.logits.argmax(-1)
    assert float((top_a == top_b).float().mean()) >= 0.9


GREEDY_PROMPTS = [
    "Explain photosynthesis in one paragraph.",
    "What does a compiler do?",
    "Describe how a bicycle works.",
    "Give me a recipe for pancakes.",
]


@pytest.mark.slow
def test_greedy_tokens_follow_hf(gguf, real_model):
    """The same greedy tokens for 32 or more on these prompts (measured: 48+, 32, 39, 42), and a
    divergence only ever at a near tie of hf's top two. Other prompts part sooner, always at a near
    tie (measured: "Why is the sky blue?" at 29, "What is the capital of France?" at 0, p 0.152 vs 0.140)."""
    kw = {"max_new_tokens": 40, "ignore_eos": True, "reducer": "neurons", "chat": True}
    long_enough = 0
    for prompt in GREEDY_PROMPTS:
        a = llmri.capture(gguf, prompt, backend="llama.cpp", **kw)
        b = llmri.capture(real_model, prompt, backend="hf", **kw)
        n_prompt = b.tokens.role.count("prompt")
        assert a.tokens.ids[:n_prompt].tolist() == b.tokens.ids[:n_prompt].tolist()
        ga, gb = a.tokens.ids[n_prompt:].tolist(), b.tokens.ids[n_prompt:].tolist()
        split = next((i for i, (x, y) in enumerate(zip(ga, gb, strict=True)) if x != y), len(gb))
        long_enough += split >= 32
        if split < len(gb):
            row = b.tokens[n_prompt + split]
            assert ga[split] in row.top_ids[:2], (prompt, split)
            assert row.top_probs[0] - row.top_probs[1] < 0.05, (prompt, split, row.top_probs[:2])
    assert long_enough >= 3


# -- a killed capture ---------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    import llmri
    from llmri.backends.llamacpp import load_gguf

    model = load_gguf(n_threads=2)
    st = llmri.stream(model, "Why is the sky blue?", chat=True, store=sys.argv[1], max_new_tokens=3000,
                      ignore_eos=True)
    for i, frame in enumerate(st):
        if i == 0:
            print("started", st.session_id, flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_leaves_the_store_crash_safe(gguf, tmp_path):
    import os
    import signal
    import time

    path, script = tmp_path / "crash.zarr", tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("started"), line
        sid = line.split()[1]
        time.sleep(2.5)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    store = llmri.open_store(path)
    s = store.session(sid)
    assert s.status == "interrupted" and "is gone" in s.meta["interrupted_reason"]
    n = len(s)
    assert n > 0
    ref = llmri.capture(gguf, "Why is the sky blue?", chat=True, max_new_tokens=n + 8, ignore_eos=True)
    np.testing.assert_array_equal(s.tokens.ids, ref.tokens.ids[:n])
    for sig in s.signals:
        np.testing.assert_array_equal(s.frames(sig), ref.frames(sig)[:n])


def test_gguf_model_is_a_context_manager():
    with load_gguf(n_threads=1) as m:
        assert isinstance(m, GGUFModel) and m.ptr
    assert m.ptr is None
    with pytest.raises(llmri.ModelLoadError, match="closed"):
        m.new_context(eval_callback=False)


# -- live chat --------------------------------------------------------------------------------------


def test_live_chat_records_with_llama_cpp(gguf, tmp_path):
    import json

    pytest.importorskip("fastapi")
    pytest.importorskip("websockets")
    from live_helpers import receive_turn
    from llmri.testing import ServedApp
    from llmri.viewer import create_app
    from llmri.viewer.live import LiveChat, ModelEngine

    store = llmri.open_store(tmp_path / "live.zarr", create=True)
    live = LiveChat(ModelEngine(gguf, backend="llama.cpp"))
    served = ServedApp(create_app(store, live=live))
    try:
        with served.connect() as ws:
            hello = json.loads(ws.recv(timeout=10))
            assert hello["backend"] == "llama.cpp" and hello["model"] == "SmolLM2-135M-Instruct"
            for turn in range(2):
                ws.send(json.dumps({"type": "chat", "messages": PROMPT, "settings": {"max_new_tokens": 6}}))
                got = receive_turn(ws, timeout=120)
                assert got["done"]["status"] == "complete", got["done"]
                sid = got["done"]["session"].split("/")[1]
                s = store.session(sid)
                assert s.meta["backend"] == "llama.cpp" and len(got["frames"]) >= 7, turn
    finally:
        live.close()
        served.close()
    assert gguf.context().recorder is None


# -- the command line ---------------------------------------------------------------------------


def test_cli_capture_and_view_with_llama_cpp(tmp_path, capsys):
    import argparse

    from llmri.cli import main as cli_main
    from llmri.commands import view

    out = tmp_path / "cli.zarr"
    args = ["capture", "Why is the sky blue?", "--backend", "llama.cpp", "-o", str(out), "--max-new-tokens", "3"]
    assert cli_main([*args, "--model", gguf_default_path()]) == 0
    sid = capsys.readouterr().out.strip().splitlines()[-1]
    s = llmri.open_store(out).session(sid)
    assert s.meta["backend"] == "llama.cpp" and s.meta["model"]["format"] == "gguf"
    assert cli_main(["capture", "hi", "--backend", "llama.cpp", "-o", str(out), "--model", str(tmp_path)]) == 1
    assert "needs a .gguf file" in capsys.readouterr().err
    ns = argparse.Namespace(model=None, openai_url=None, backend="llama.cpp", paths=[])
    with pytest.raises(CaptureError, match="give --model too"):
        view.live_plugin(ns)
    ns = argparse.Namespace(model="default", openai_url=None, backend="nope", paths=[])
    with pytest.raises(CaptureError, match="unknown backend 'nope'"):
        view.live_plugin(ns)


def gguf_default_path() -> str:
    from llmri.models.identity import default_gguf_path

    return str(default_gguf_path())


def test_demo_uses_llama_cpp_when_installed(monkeypatch):
    import importlib.util

    from llmri.commands.demo import demo_backend

    assert demo_backend(None) == "llama.cpp" and demo_backend("hf") == "hf"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert demo_backend(None) == "hf"
