"""One llama.cpp context (its KV cache, batch and eval callback) through llama-cpp-python's low-level API."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..._errors import CaptureError
from . import native
from .ggml import ggml
from .native import NativeEval
from .recorder import Recorder


class LlamaContext:
    """A ``llama_context`` on a loaded ``llama_model``: one sequence, every position an output.

    ``eval_callback=True`` installs llmri's eval callback for the context's lifetime (llama.cpp
    takes it only at creation). It does nothing unless a :class:`Recorder` is installed, which
    :meth:`recording` does for one decode and removes in ``finally``, so no state outlives a step.
    Where a C compiler is at hand the callback is the compiled one (:attr:`native`, see
    :mod:`.native`: the same checks and copies, without Python at every graph node), else Python's.
    Without it the context is plain llama.cpp (the benchmarks' baseline). ``lock`` serialises users.
    ``flash_attn``: ``False`` (llmri's default: the CPU flash-attention kernel works in float16 and
    moves activations further from the float32 reference, see docs/backends.md), ``True``, or
    ``None`` for llama.cpp's own choice.

    Every position of a batch is flagged as an output: the prompt's frames need the logits at every
    position, and llama.cpp keeps only the output rows in the last layer (``ggml_get_rows`` before
    its ``ffn_out`` / ``l_out``). A batch holds at most :attr:`n_batch` positions (one ubatch, so one
    graph per ``llama_decode``). Freed by :meth:`close`.
    """

    def __init__(
        self,
        model: Any,
        *,
        n_ctx: int,
        n_threads: int,
        n_batch: int = 512,
        eval_callback: bool = True,
        flash_attn: bool | None = False,
    ) -> None:
        import llama_cpp as L

        self._L = L
        p = L.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = p.n_ubatch = n_batch
        p.n_seq_max = 1
        p.n_threads = p.n_threads_batch = n_threads
        p.no_perf = True
        auto, on, off = L.LLAMA_FLASH_ATTN_TYPE_AUTO, L.LLAMA_FLASH_ATTN_TYPE_ENABLED, L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.flash_attn_type = auto if flash_attn is None else (on if flash_attn else off)
        self._callback = None
        self._native: NativeEval | None = None
        if eval_callback:
            self._callback = L.ggml_backend_sched_eval_callback(self._on_eval)  # kept alive with the context
            p.cb_eval = self._callback
            lib = native.library() if native.enabled() else None
            if lib is not None:  # evalcb.c answers, handing a recorder it does not reimplement to _on_eval
                self._native = NativeEval(lib, ggml(), self._callback)
                p.cb_eval = ctypes.cast(self._native.function, L.ggml_backend_sched_eval_callback)
                p.cb_eval_user_data = self._native.user_data
        ctx = L.llama_init_from_model(model, p)
        if not ctx:
            raise CaptureError(f"llama.cpp: cannot create a context of {n_ctx} positions (out of memory?)")
        self.ctx = ctx
        self.n_ctx = int(L.llama_n_ctx(ctx))
        self.n_batch = n_batch
        self.n_vocab = int(L.llama_vocab_n_tokens(L.llama_model_get_vocab(model)))
        self._mem = L.llama_get_memory(ctx)
        self._batch = L.llama_batch_init(n_batch, 0, 1)
        for i in range(n_batch):  # one sequence, every position an output: only token and pos change
            self._batch.n_seq_id[i] = 1
            self._batch.seq_id[i][0] = 0
            self._batch.logits[i] = 1
        self.recorder: Recorder | None = None
        self.lock = threading.Lock()
        self.epoch = 0  # bumped by reset(): a cache from before names an older sequence
        self.n_past = 0
        self._cvec: bytes | None = None  # the control vector applied now (None: none)

    # -- the callback -------------------------------------------------------------------------
    @property
    def native(self) -> bool:
        """Whether the eval callback is the compiled one (``evalcb.c``, see :mod:`.native`), not Python's."""
        return self._native is not None

    def _on_eval(self, t: int, ask: bool, _user_data: Any) -> bool:
        rec = self.recorder
        if rec is None:
            return not ask
        try:
            return rec.wants(t) if ask else rec.computed(t)
        except BaseException as exc:  # noqa: BLE001 - nothing may cross into C; raised after the decode
            rec.fail(exc)
            return False

    @contextmanager
    def recording(self, recorder: Recorder) -> Iterator[Recorder]:
        """Install ``recorder`` for the decodes inside the block; removed in ``finally``."""
        if self._callback is None:
            raise CaptureError("llama.cpp: this context was made without the eval callback")
        self.recorder = recorder
        try:
            if self._native is not None:
                self._native.bind(recorder)
            yield recorder
        finally:
            if self._native is not None:
                self._native.unbind()
            self.recorder = None

    def set_cvec(self, data: np.ndarray | None, n_layers: int, d_model: int) -> None:
        """Apply ``data`` (float32 ``[(n_layers - 1) * d_model]``, block 1 first) as llama.cpp's
        control vector for the decodes from now on, or none (``None``); a call that changes nothing
        costs nothing. Every step of every backend on this context says which, so a capture
        without interventions never runs with one left by another."""
        key = None if data is None else data.tobytes()
        if key == self._cvec:
            return
        if data is None:
            rc = self._L.llama_set_adapter_cvec(self.ctx, None, 0, d_model, -1, -1)
        else:
            buf = np.ascontiguousarray(data, dtype=np.float32)
            ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            rc = self._L.llama_set_adapter_cvec(self.ctx, ptr, buf.size, d_model, 1, n_layers - 1)
        if rc != 0:
            raise CaptureError(f"llama.cpp: llama_set_adapter_cvec returned {rc}")
        self._cvec = key

    # -- the sequence -------------------------------------------------------------------------
    def reset(self) -> int:
        """Forget every position (a new sequence); returns the new epoch."""
        self._L.llama_memory_clear(self._mem, True)
        self.n_past = 0
        self.epoch += 1
        return self.epoch

    def rollback(self, n_past: int) -> None:
        """Drop the positions from ``n_past`` on (after a failed step), keeping the ones before."""
        self._L.llama_memory_seq_rm(self._mem, 0, n_past, -1)
        self.n_past = n_past

    def decode(self, ids: Sequence[int], logits: np.ndarray | None = None) -> None:
        """Run ``ids`` (at most :attr:`n_batch`) at positions ``n_past ..``; with ``logits`` (float32
        ``[len(ids), vocab]``) copy the logits there (llama.cpp reuses its own buffer next decode).
        Raises :class:`CaptureError` when llama.cpp refuses; the positions stay unless it succeeded."""
        n = len(ids)
        if not 0 < n <= self.n_batch:
            raise CaptureError(f"llama.cpp: a batch holds 1 to {self.n_batch} positions, got {n}")
        if self.n_past + n > self.n_ctx:
            raise CaptureError(f"llama.cpp: {self.n_past + n} positions exceed the context of {self.n_ctx}")
        b = self._batch
        tok, pos, start = b.token, b.pos, self.n_past
        for i, t in enumerate(ids):
            tok[i] = t
            pos[i] = start + i
        b.n_tokens = n
        nat = self._native if self._native is not None and self._native.native else None
        if nat is None:
            rc = self._L.llama_decode(self.ctx, b)
        else:  # the recorder's state into C and back, around the decode
            rec = self.recorder
            assert rec is not None
            nat.load(rec)
            try:
                rc = self._L.llama_decode(self.ctx, b)
            finally:
                nat.store(rec)
        if rc != 0:
            raise CaptureError(f"llama.cpp: llama_decode returned {rc}")
        self.n_past = start + n
        if logits is not None:
            src = self._L.llama_get_logits(self.ctx)
            ctypes.memmove(logits.ctypes.data, src, 4 * n * self.n_vocab)

    def close(self) -> None:
        if self.ctx:
            self._L.llama_batch_free(self._batch)
            self._L.llama_free(self.ctx)
            self.ctx = None
