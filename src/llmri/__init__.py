"""llmri: an fMRI for language models. Capture every token's activations across all layers,
reduce each layer to a small tile, store the frames, and scrub them like a video."""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from . import backends  # noqa: F401 - registers every backend (llama.cpp's loader is reached through it)
from ._deprecated import install_module_aliases
from ._errors import CaptureError, LlmriError, MissingExtraError, ModelLoadError, ReducerError, SAEError, StoreError
from .capture import CaptureStream, FrameStream, GenerationSettings, capture, compare, patching, rerun, stream
from .capture.precision import FrameOverflowWarning
from .chatonly import ChatOnlyClient, ChatOnlyStream, chat_only, chat_only_stream
from .frame import SIGNALS, Frame, Token, TokenTable
from .interventions import Ablate, Direction, Steer, ablate, direction, load_direction, patch, steer
from .models import LoadedModel, load_model, wrap
from .readouts.sae import SAE, load_sae
from .reducers import REDUCERS, Reducer, make_reducer
from .store import FrameStore, MemoryFrameStore, Session, SessionReader, open_store
from .store.base import set_show

if TYPE_CHECKING:
    from .notebook import show
    from .study import capture_many
    from .viewer.launch import view

__all__ = [
    "REDUCERS",
    "SIGNALS",
    "Ablate",
    "CaptureError",
    "CaptureStream",
    "ChatOnlyClient",
    "ChatOnlyStream",
    "Direction",
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
    "SAE",
    "SAEError",
    "Reducer",
    "ReducerError",
    "Session",
    "SessionReader",
    "Steer",
    "StoreError",
    "Token",
    "TokenTable",
    "__version__",
    "ablate",
    "capture",
    "capture_many",
    "chat_only",
    "chat_only_stream",
    "compare",
    "direction",
    "load_direction",
    "load_model",
    "load_sae",
    "make_reducer",
    "open_store",
    "patch",
    "patching",
    "rerun",
    "show",
    "steer",
    "stream",
    "view",
    "wrap",
]


def __getattr__(name: str) -> Any:
    # the notebook widget and the viewer load when first asked for: `import llmri` stays light
    if name == "show":
        from .notebook import show

        return show
    if name == "capture_many":
        from .study import capture_many

        return capture_many
    if name == "view":
        from .viewer.launch import view

        return view
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _show_session(session: Any, **kw: Any) -> Any:
    from .notebook import show

    return show(session, **kw)


set_show(_show_session)
install_module_aliases()
