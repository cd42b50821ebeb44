"""``llama.cpp``: full activations from GGUF models at llama.cpp's speed (``pip install 'llmri[llamacpp]'``).

llama-cpp-python is imported only when a model loads: registering the backend is free.
"""

from .backend import TENSORS, LlamaCache, LlamaCppBackend, tensor_names
from .codec import GGUFTokenizer
from .context import LlamaContext
from .model import GGUFConfig, GGUFModel, load_gguf

__all__ = [
    "TENSORS",
    "GGUFConfig",
    "GGUFModel",
    "GGUFTokenizer",
    "LlamaCache",
    "LlamaContext",
    "LlamaCppBackend",
    "load_gguf",
    "tensor_names",
]
