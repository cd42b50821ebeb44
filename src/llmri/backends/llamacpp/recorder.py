"""What the eval callback does during one ``llama_decode``: answer ``ask`` and copy the wanted tensors."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..._errors import CaptureError
from .ggml import GGML_TYPE_F32, GGML_TYPE_NAMES, Ggml, TensorHead

# ggml_tensor.name is a char[GGML_MAX_NAME = 64]; ``.value`` stops at its NUL. A third of the cost of
# ctypes.string_at, and this runs for every node of every graph.
_name_at = (ctypes.c_char * 64).from_address


class Recorder:
    """Copies the tensors named in ``slots`` into float32 buffers ``[n, layers, d]``, one per signal.

    ``slots`` maps a graph tensor name (``b"l_out-3"``) to ``(buffer index, layer)``. The buffers
    are new for every step: the caller owns them (the returned Tensors share their memory).
    :meth:`wants` answers ``ask`` with a dict lookup; :meth:`computed` checks a computed tensor
    (f32, ``ne = [d, rows]``, rows contiguous) and copies it with ``ggml_backend_tensor_get`` straight
    into the buffer when ``rows == 1``, else through one scratch block. The first error is kept in
    :attr:`error` and every later tensor is declined, so llama.cpp stops computing soon. ``evalcb.c``
    does the same in C where it is built (:mod:`.native`), reading and writing this object's state.
    """

    def __init__(
        self,
        lib: Ggml,
        slots: dict[bytes, tuple[int, int]],
        n_signals: int,
        n: int,
        layers: int | Sequence[int],
        d: int,
        stacked: int = 0,
    ):
        self.name_offset = lib.name_offset
        self.tensor_get = lib.tensor_get
        self.slots = slots
        self.d = d
        #: layers per buffer (``layers`` for all, or one count per buffer: an internal buffer can be smaller)
        self.layers = [layers] * n_signals if isinstance(layers, int) else list(layers)
        #: the first ``stacked`` buffers (the signals') are views of one block ``[stacked, n, layers, d]``
        self.block: np.ndarray | None = None
        if stacked:
            self.block = np.empty((stacked, n, self.layers[0], d), dtype=np.float32)
        self.bufs = [
            self.block[k] if self.block is not None and k < stacked else np.empty((n, lk, d), dtype=np.float32)
            for k, lk in enumerate(self.layers)
        ]
        self.bases = [b.ctypes.data for b in self.bufs]  # each buffer's address (the native callback's too)
        self._scratch: np.ndarray | None = None
        self.row0 = 0  # first row of the batch being decoded (a step longer than n_ubatch decodes several)
        self.rows = 0
        self.seen: set[bytes] = set()
        self.error: BaseException | None = None

    def start(self, row0: int, rows: int) -> None:
        self.row0, self.rows = row0, rows
        self.seen.clear()

    def wants(self, t: int) -> bool:
        """The answer to ``ask``: whether tensor ``t`` is one of :attr:`slots` (the hot path: one
        name read and a dict lookup, for every node of the graph)."""
        return self.error is None and _name_at(t + self.name_offset).value in self.slots

    def computed(self, t: int) -> bool:
        """Tensor ``t`` (one :meth:`wants` accepted) is computed: check it and copy it out."""
        if self.error is not None:
            return False
        name = _name_at(t + self.name_offset).value
        sig, layer = self.slots[name]
        head = TensorHead.from_address(t)
        d, rows = self.d, self.rows
        ne = head.ne
        if head.type != GGML_TYPE_F32 or ne[0] != d or ne[1] != rows or ne[2] * ne[3] != 1 or head.nb[1] != 4 * d:
            what = GGML_TYPE_NAMES.get(head.type, f"type {head.type}")
            raise CaptureError(
                f"llama.cpp: tensor {name.decode()} is {what} {list(ne)}, expected f32 [{d}, {rows}, 1, 1] "
                "with contiguous rows"
            )
        if name in self.seen:
            raise CaptureError(f"llama.cpp: tensor {name.decode()} appears twice in one graph")
        self.seen.add(name)
        if rows == 1:
            self.tensor_get(t, self.bases[sig] + 4 * d * (self.row0 * self.layers[sig] + layer), 0, 4 * d)
        else:
            if self._scratch is None or self._scratch.shape[0] < rows:
                self._scratch = np.empty((rows, d), dtype=np.float32)
            self.tensor_get(t, self._scratch.ctypes.data, 0, 4 * d * rows)
            self.bufs[sig][self.row0 : self.row0 + rows, layer] = self._scratch[:rows]
        return True

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc

    def missing(self) -> list[str]:
        """The wanted tensors the last graph did not compute."""
        return sorted(n.decode() for n in self.slots.keys() - self.seen)

    def tensors(self) -> list[Any]:
        """The buffers as torch Tensors ``[n, layers, d]`` sharing their memory (no copy)."""
        import torch

        return [torch.from_numpy(b) for b in self.bufs]
