"""The ``llama.cpp`` backend's mapping per architecture, on tiny random GGUF files written from
transformers models (``tests/gguf_tiny.py``: float32 weights, so llama.cpp and ``hf`` compute the
same thing up to llama.cpp's float16 KV cache): every signal of every layer against the ``hf``
backend on the same weights, where llama.cpp names the tensor (``attn_out-N``) and where llmri
derives it (``ffn_inp-N`` / ``sa_out-N`` minus the block's input), and a clear refusal where the
graph does not hold what the other backends record (OLMo 2's normalised attention output)."""

from __future__ import annotations

import numpy as np
import pytest

import llmri
from llmri._errors import CaptureError

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

import gguf_tiny  # noqa: E402
from llmri.backends.hf import HFBackend  # noqa: E402
from llmri.backends.llamacpp import (
    LlamaCppBackend,  # noqa: E402
    load_gguf,  # noqa: E402
)

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away. " * 2
#: model_type -> how llama.cpp's graph gives ``attn`` (its own ``attn_out``, or derived).
CAPTURED = {
    "llama": "attn_out",
    "mistral": "attn_out",
    "qwen2": "ffn_inp",
    "qwen3": "ffn_inp",
    "starcoder2": "ffn_inp",
    "gemma": "sa_out",
}
COS_MIN = 0.9999


@pytest.fixture(scope="module")
def tokenizer():
    return llmri.load_model().tokenizer


@pytest.fixture(scope="module", params=sorted(CAPTURED))
def pair(request, tmp_path_factory, tokenizer):
    """(model_type, hf model, its GGUF loaded by llama.cpp)."""
    hf = gguf_tiny.tiny_hf(request.param)
    path = gguf_tiny.write_gguf(hf, tmp_path_factory.mktemp("gguf") / f"tiny-{request.param}.gguf")
    g = load_gguf(str(path), n_threads=2)
    yield request.param, hf, g
    g.close()


def _cos(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def test_every_signal_of_every_layer_matches_hf(pair, tokenizer):
    import torch

    model_type, hf, g = pair
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    cap = LlamaCppBackend(g)
    a = cap.step(ids)
    b = HFBackend(llmri.wrap(hf, tokenizer)).step(ids)
    for sig in llmri.SIGNALS:
        cos = _cos(a.acts[sig].numpy(), b.acts[sig].float().numpy())
        assert cos.shape == (ids.shape[1], hf.config.num_hidden_layers)
        assert cos.min() >= COS_MIN, (model_type, sig, float(cos.min()))
    assert float((a.logits.argmax(-1) == b.logits.argmax(-1)).float().mean()) >= 0.9
    how = CAPTURED[model_type]
    assert cap.signal_modules["attn"][1].startswith(f"{how}-1")
    assert ("attn" in g.derived) == (how != "attn_out")
    if how != "attn_out":  # derived: the residual after attention minus the block's input
        assert cap.signal_modules["attn"][1] == f"{how}-1 - l_out-0"


def test_a_derived_attn_without_resid_is_the_same(pair, tokenizer):
    """Asking for ``attn`` alone records the tensors it is derived from internally."""
    import torch

    _, _, g = pair
    ids = torch.tensor([tokenizer(TEXT)["input_ids"][:12]])
    both = LlamaCppBackend(g).step(ids)
    alone = LlamaCppBackend(g, ["attn"]).step(ids)
    assert list(alone.acts) == ["attn"]
    np.testing.assert_allclose(alone.acts["attn"].numpy(), both.acts["attn"].numpy(), rtol=1e-5, atol=1e-6)


def test_capture_records_the_mapping_in_the_session(tmp_path, tokenizer):
    hf = gguf_tiny.tiny_hf("qwen2")
    path = gguf_tiny.write_gguf(hf, tmp_path / "tiny-qwen2.gguf")
    s = llmri.capture(str(path), TEXT, backend="llama.cpp", chat=False, max_new_tokens=4, ignore_eos=True)
    assert s.meta["backend"] == "llama.cpp" and s.meta["model"]["architecture"] == "qwen2"
    assert s.meta["signal_modules"]["attn"][0] == "ffn_inp-0 - embd"
    assert s.tokens.role.count("generated") == 4


def test_a_post_norm_architecture_refuses_attn_and_captures_the_rest(tmp_path, tokenizer):
    import torch

    hf = gguf_tiny.tiny_hf("olmo2")
    g = load_gguf(str(gguf_tiny.write_gguf(hf, tmp_path / "tiny-olmo2.gguf")), n_threads=2)
    try:
        with pytest.raises(CaptureError, match=r"normalises the attention output .*attn_post_norm-N.*'resid', 'mlp'"):
            LlamaCppBackend(g)
        ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
        a = LlamaCppBackend(g, ["resid", "mlp"]).step(ids)
        b = HFBackend(llmri.wrap(hf, tokenizer)).step(ids)
        for sig in ("resid", "mlp"):
            assert _cos(a.acts[sig].numpy(), b.acts[sig].float().numpy()).min() >= COS_MIN, sig
    finally:
        g.close()
