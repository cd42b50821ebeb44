"""A GGUF file loaded by llama.cpp: the model, its metadata, tokenizer and the context captures share."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._errors import ModelLoadError, require
from ...models.identity import DEFAULT_NAME, gguf_fingerprint, gguf_path
from .codec import GGUFTokenizer
from .context import LlamaContext


@dataclass(frozen=True)
class GGUFConfig:
    """What llmri reads of a model's shape (the names of a transformers config, for the shared code)."""

    architecture: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    vocab_size: int
    max_position_embeddings: int  # the context llmri allocates (at most the model's trained context)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform says, else all)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _file_types(L: Any) -> dict[int, str]:
    """``general.file_type`` values to names (``3 -> "Q4_1"``), from llama.h's ``LLAMA_FTYPE_*``."""
    out = {}
    for name in dir(L):
        if name.startswith("LLAMA_FTYPE_") and name != "LLAMA_FTYPE_GUESSED":
            out[int(getattr(L, name))] = name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").replace("ALL_", "")
    return out


class GGUFModel:
    """A ``.gguf`` model run by llama.cpp (through llama-cpp-python), ready for the ``llama.cpp`` backend.

    Holds the ``llama_model`` (weights memory-mapped), :attr:`tokenizer` (:class:`GGUFTokenizer`),
    the metadata a session records (:meth:`describe`: name, quantisation, fingerprint) and one
    context with llmri's eval callback, made on first use and shared by the captures of this model
    one at a time (its KV cache is their cache). ``n_ctx``: positions to allocate (default: the
    model's trained context, at most 8192); ``n_threads``: llama.cpp's threads; ``flash_attn``: see
    :class:`~llmri.backends.llamacpp.LlamaContext` (off by default). ``close()`` frees
    the contexts and the model; it is also a context manager.
    """

    llmri_backend = "llama.cpp"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        name: str | None = None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        flash_attn: bool | None = False,
    ) -> None:
        L = require("llama_cpp", "llamacpp")
        self._L = L
        self.path = str(Path(path).resolve())
        quiet = logging.getLogger("llama-cpp-python")
        if quiet.level == logging.NOTSET:  # llama-cpp-python prints every loader line unless told
            quiet.setLevel(logging.ERROR)
        L.llama_backend_init()
        params = L.llama_model_default_params()
        ptr = L.llama_model_load_from_file(self.path.encode(), params)
        if not ptr:
            raise ModelLoadError(f"{self.path}: llama.cpp cannot load this GGUF file (see its log above)")
        self.ptr = ptr
        self.n_threads = int(n_threads or default_threads())
        self.flash_attn = flash_attn
        trained = int(L.llama_model_n_ctx_train(ptr))
        self.n_ctx = int(n_ctx or min(trained, 8192))
        self.architecture = self.meta("general.architecture") or "?"
        self.gguf_name = self.meta("general.name") or ""
        stem = Path(path).stem  # as given: an Ollama blob may be a link to a file named otherwise
        self.name = name or (self.gguf_name if stem.startswith("sha256-") and self.gguf_name else stem)
        ftype = self.meta("general.file_type")
        self.quantization = _file_types(L).get(int(ftype), f"file_type {ftype}") if ftype else self._desc_quant()
        self.fingerprint = gguf_fingerprint(Path(self.path))
        vocab = L.llama_model_get_vocab(ptr)
        template = L.llama_model_chat_template(ptr, None)
        unk = self.meta("tokenizer.ggml.unknown_token_id")
        self.tokenizer = GGUFTokenizer(vocab, template.decode("utf-8") if template else None, int(unk) if unk else None)
        self.config = GGUFConfig(
            architecture=self.architecture,
            num_hidden_layers=int(L.llama_model_n_layer(ptr)),
            hidden_size=int(L.llama_model_n_embd(ptr)),
            num_attention_heads=int(L.llama_model_n_head(ptr)),
            vocab_size=self.tokenizer.vocab_size,
            max_position_embeddings=self.n_ctx,
        )
        self._context: LlamaContext | None = None
        self._lock = threading.Lock()
        self.verified: set[str] = set()  # signals whose tensors a probe found (see LlamaCppBackend)
        self.derived: set[str] = set()  # verified signals computed from other tensors (see backend.ATTN_FROM)
        self.attn_from = ("", "")  # a derived attn's (residual after attention, block 0's input) tensors
        self.post_norm = False  # the graph normalises the attention output before the residual add

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text (``None`` when the file has no such key)."""
        buf = ctypes.create_string_buffer(1024)
        n = self._L.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self._L.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def _desc_quant(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self._L.llama_model_desc(self.ptr, buf, len(buf))
        return buf.value.decode(errors="replace").rsplit(" ", 1)[-1]

    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.config.hidden_size

    def context(self) -> LlamaContext:
        """The context with llmri's eval callback that this model's captures share (made once)."""
        with self._lock:
            if self._context is None:
                self._context = self.new_context(eval_callback=True)
            return self._context

    def new_context(self, *, eval_callback: bool) -> LlamaContext:
        """A new context of :attr:`n_ctx` positions (``eval_callback=False``: plain llama.cpp); the caller closes it."""
        if not self.ptr:
            raise ModelLoadError(f"{self.path}: this model was closed")
        return LlamaContext(
            self.ptr,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            eval_callback=eval_callback,
            flash_attn=self.flash_attn,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "fingerprint": self.fingerprint,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "dtype": "float32",
            "architecture": self.architecture,
            "format": "gguf",
            "gguf_name": self.gguf_name,
            "quantization": self.quantization,
            "n_ctx": self.n_ctx,
        }

    def close(self) -> None:
        with self._lock:
            if self._context is not None:
                self._context.close()
                self._context = None
            if self.ptr:
                self._L.llama_model_free(self.ptr)
                self.ptr = None

    def __enter__(self) -> GGUFModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<GGUFModel {self.name} {self.quantization} layers={self.n_layers} d_model={self.d_model}>"


def load_gguf(
    spec: str | os.PathLike | None = None, *, n_ctx: int | None = None, n_threads: int | None = None, **options: Any
) -> Any:
    """A GGUF file loaded by llama.cpp for the ``llama.cpp`` backend (needs ``llmri[llamacpp]``): a
    :class:`~llmri.backends.llamacpp.GGUFModel` (its keywords: ``n_ctx``, ``n_threads``, ``flash_attn``).
    ``spec``: ``None`` for the bundled SmolLM2-135M-Instruct, or a ``.gguf`` path (or an Ollama blob)."""
    path = gguf_path(spec)
    default = spec is None or (isinstance(spec, str) and spec.strip() in ("", "default"))
    return GGUFModel(path, name=DEFAULT_NAME if default else None, n_ctx=n_ctx, n_threads=n_threads, **options)
