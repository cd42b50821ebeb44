"""The ``hf`` backend: forward hooks on a transformers model (``backend.py``), where a model keeps
its blocks and each signal's module (``layout.py``), and the per-step hooks and eval mode (``hooks.py``)."""

from .backend import HFBackend, attention_weights, eager_attention, find_attention, find_lens_head, logit_postprocess

__all__ = ["HFBackend", "attention_weights", "eager_attention", "find_attention", "find_lens_head", "logit_postprocess"]
