"""Seconds inside a transformers model's forward: what ``capture_overhead.py`` subtracts from a run's
wall time to report the time outside it (llmri's frame work, or ``generate()``'s own loop)."""

from __future__ import annotations

import functools
import time
from typing import Any


class ForwardClock:
    """Patches the ``forward`` of a :class:`~llmri.models.LoadedModel`'s causal LM and of its decoder
    (the module holding the layers: the hf backend runs it alone for the last token) on the instances,
    keeping their signatures (the backend reads them), and sums the wall time of the outermost calls
    (``seconds``) and the calling thread's CPU time in them (``cpu_seconds``: with one torch thread, all
    of the forward's CPU). The hf backend's hooks run inside the forward, so they count as inside."""

    def __init__(self, loaded: Any) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._depth = 0
        lm = loaded.model
        for module in {id(m): m for m in (lm, getattr(lm, "model", None)) if m is not None}.values():
            module.forward = self._timed(module.forward)

    def _timed(self, real: Any) -> Any:
        @functools.wraps(real)
        def forward(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return real(*args, **kwargs)
            self._depth += 1
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.cpu_seconds += time.thread_time() - c0
                self._depth -= 1

        return forward

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s

    def take_cpu(self) -> float:
        s, self.cpu_seconds = self.cpu_seconds, 0.0
        return s


class CudaForwardClock:
    """:class:`ForwardClock` for a model on CUDA, where a forward returns once its kernels are queued:
    a CUDA event is recorded on the current stream before and after each outermost forward, and
    ``take()`` (which synchronises) sums the GPU time between each pair. A run's wall time less that
    is the time the GPU spent outside the forward: llmri's frame work and hand-offs not hidden behind
    a forward, or ``generate()``'s own loop. Same patching and interface as :class:`ForwardClock`."""

    def __init__(self, loaded: Any) -> None:
        import torch

        self._torch = torch
        self._pairs: list[tuple[Any, Any]] = []
        self._depth = 0
        lm = loaded.model
        for module in {id(m): m for m in (lm, getattr(lm, "model", None)) if m is not None}.values():
            module.forward = self._timed(module.forward)

    def _timed(self, real: Any) -> Any:
        @functools.wraps(real)
        def forward(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return real(*args, **kwargs)
            self._depth += 1
            start = self._torch.cuda.Event(enable_timing=True)
            end = self._torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                return real(*args, **kwargs)
            finally:
                end.record()
                self._pairs.append((start, end))
                self._depth -= 1

        return forward

    def take(self) -> float:
        """Seconds of GPU time inside the forwards since the last call (synchronises)."""
        self._torch.cuda.synchronize()
        pairs, self._pairs = self._pairs, []
        return sum(a.elapsed_time(b) for a, b in pairs) / 1000

    def take_cpu(self) -> float:
        return 0.0
