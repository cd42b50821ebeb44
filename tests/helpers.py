"""Helpers several test folders share: a tiny random Llama on the synthetic backend's byte
tokenizer (fast tests of the real hf backend), and the check of a one-line store error."""

from __future__ import annotations

import pytest
import torch

from llmri import StoreError
from llmri.backends.synthetic import ByteTokenizer
from llmri.models import LoadedModel


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


def one_line_error(fn, match: str) -> str:
    with pytest.raises(StoreError, match=match) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg
    return msg
