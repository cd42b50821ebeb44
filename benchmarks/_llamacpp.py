"""Plain llama.cpp decoding through llama-cpp-python's low-level API (no eval callback): the baseline the
``llama.cpp`` backend is measured against, on a context made with the same settings as the backend's."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


class PlainDecoder:
    """Greedy decoding as a llama.cpp program does it: the prompt in one batch with only the last
    position's logits, then one ``llama_decode`` per new token (the last token needs none)."""

    def __init__(self, model: Any) -> None:  # a GGUFModel
        import llama_cpp as L

        self.L = L
        self.ctx = model.new_context(eval_callback=False)
        self.batch = L.llama_batch_init(512, 0, 1)

    def _decode(self, ids: list[int], start: int) -> None:
        b = self.batch
        for i, t in enumerate(ids):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0] = t, start + i, 1, 0
            b.logits[i] = i == len(ids) - 1
        b.n_tokens = len(ids)
        if self.L.llama_decode(self.ctx.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def generate(self, ids: list[int], n: int, on_token: Callable[[int], None] | None = None) -> list[int]:
        L, c = self.L, self.ctx.ctx
        L.llama_memory_clear(L.llama_get_memory(c), True)
        self._decode(list(ids), 0)
        out: list[int] = []
        for i in range(n):
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(c, -1), shape=(self.ctx.n_vocab,))
            tok = int(logits.argmax())
            out.append(tok)
            if on_token is not None:
                on_token(tok)
            if i < n - 1:
                self._decode([tok], len(ids) + i)
        return out

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.ctx.close()


class DecodeClock:
    """Seconds spent inside ``llama_decode`` (the eval callback included), by patching llama_cpp's binding."""

    def __init__(self) -> None:
        import llama_cpp as L

        self.seconds = 0.0
        real = L.llama_decode

        def timed(ctx: Any, batch: Any) -> int:
            t0 = time.perf_counter()
            try:
                return real(ctx, batch)
            finally:
                self.seconds += time.perf_counter() - t0

        L.llama_decode = timed

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s
