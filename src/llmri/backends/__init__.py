"""Capture backends: each one behind the :class:`~llmri.backends.base.Capture` interface."""

# transformer_lens and nnsight import their libraries only inside methods: registering is free.
from . import hf, nnsight, synthetic, transformer_lens  # noqa: F401 - register
from .base import BACKENDS, Capture, Step

__all__ = ["BACKENDS", "Capture", "Step"]
