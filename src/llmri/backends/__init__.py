"""Backends: the sources of activations.

Each module here is a capture backend behind the :class:`~llmri.backends.base.Backend` interface,
registered in :data:`BACKENDS` (``--backend``); ``wrapped.py`` adapts a wrapper the user already
built (a TransformerLens bridge, an nnsight model). Chat-only mode, which has no activations, is
not a backend: it is :mod:`llmri.chatonly`.
"""

# transformer_lens, nnsight and llamacpp import their libraries only inside methods: registering is free.
from . import hf, llamacpp, nnsight, synthetic, transformer_lens  # noqa: F401 - register
from .base import BACKENDS, Backend, Step

__all__ = ["BACKENDS", "Backend", "Step"]

from .._deprecated import renamed  # noqa: E402

__getattr__ = renamed(__name__, {"Capture": "llmri.backends.base:Backend"})
