"""Models: loading (the bundled default, model directories, GGUF files, hub ids), wrapping a
transformers model you already loaded, where it is placed, and its identity (fingerprints and
llmri's cache directory). Knows no backend: a backend that runs its own files (llama.cpp) is
reached through the backend registry."""

from .._deprecated import renamed
from .identity import (
    DEFAULT_NAME,
    cache_dir,
    default_gguf_path,
    describe_model,
    fingerprint,
    gguf_fingerprint,
    gguf_path,
    module_fingerprint,
)
from .loading import LoadedModel, gguf_model_dir, load_model
from .placement import DeviceMap, torch_dtype
from .wrapping import is_transformers_model, wrap

__all__ = [
    "DEFAULT_NAME",
    "DeviceMap",
    "LoadedModel",
    "cache_dir",
    "default_gguf_path",
    "describe_model",
    "fingerprint",
    "gguf_fingerprint",
    "gguf_model_dir",
    "gguf_path",
    "is_transformers_model",
    "load_model",
    "module_fingerprint",
    "torch_dtype",
    "wrap",
]

__getattr__ = renamed(__name__, {"load_gguf": "llmri.backends.llamacpp:load_gguf"})
