"""Backends: the sources of frames.

Each module here but one is a capture backend behind the :class:`~llmri.backends.base.Capture`
interface, registered in :data:`BACKENDS` (``--backend``). ``openai/`` is the backend without
activations: chat-only mode, an OpenAI-compatible server's answer as a
:class:`~llmri.backends.openai.ChatOnlyStream`; it is not a Capture, so it is not registered.
"""

# transformer_lens, nnsight and llamacpp import their libraries only inside methods: registering is free.
from . import hf, llamacpp, nnsight, synthetic, transformer_lens  # noqa: F401 - register
from .base import BACKENDS, Capture, Step

__all__ = ["BACKENDS", "Capture", "Step"]
