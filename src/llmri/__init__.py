"""llmri: an fMRI for language models. Capture every token's activations across all layers,
reduce each layer to a small tile, store the frames, and scrub them like a video."""

from __future__ import annotations

__version__ = "0.1.0"

from ._errors import CaptureError, LlmriError, MissingExtraError, ModelLoadError, ReducerError, StoreError
from .backends.openai import ChatOnlyClient, ChatOnlyStream, chat_only, chat_only_stream
from .capture import CaptureStream, capture, stream
from .decode import GenerationSettings
from .frame import SIGNALS, Frame, Token, TokenTable
from .framestream import FrameStream
from .models import LoadedModel, load_model
from .notebook import show
from .precision import FrameOverflowWarning
from .reducers import REDUCERS, Reducer, make_reducer
from .store import FrameStore, MemoryFrameStore, Session, SessionReader, open_store
from .viewing import view
from .wrapping import wrap

__all__ = [
    "REDUCERS",
    "SIGNALS",
    "CaptureError",
    "CaptureStream",
    "ChatOnlyClient",
    "ChatOnlyStream",
    "Frame",
    "FrameOverflowWarning",
    "FrameStore",
    "FrameStream",
    "GenerationSettings",
    "LlmriError",
    "LoadedModel",
    "MemoryFrameStore",
    "MissingExtraError",
    "ModelLoadError",
    "Reducer",
    "ReducerError",
    "Session",
    "SessionReader",
    "StoreError",
    "Token",
    "TokenTable",
    "__version__",
    "capture",
    "chat_only",
    "chat_only_stream",
    "load_model",
    "make_reducer",
    "open_store",
    "show",
    "stream",
    "view",
    "wrap",
]
