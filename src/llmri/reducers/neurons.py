"""``neurons``: no projection; the d_model values folded into a near-square tile (lossless)."""

from __future__ import annotations

import math
from typing import Any

from .._errors import ReducerError
from .base import REDUCERS, Reducer, parse_tile


def fold_shape(d: int) -> tuple[int, int]:
    """The most square ``H x W`` with ``H*W == d`` and aspect <= 2, else ``ceil(sqrt(d))`` squared."""
    for h in range(math.isqrt(d), 0, -1):
        if d % h == 0:
            if d // h <= 2 * h:
                return h, d // h
            break
    s = math.isqrt(d - 1) + 1
    return s, s


@REDUCERS.register("neurons")
class Neurons(Reducer):
    """Pixel ``i`` (row-major) is neuron ``i``; trailing pixels past ``d_model`` are 0 (see
    ``spec["n_values"]``). The tile shape follows from ``d_model`` unless given (it must fit)."""

    kind = "neurons"

    def __init__(self, tile: Any = None, seed: int = 0) -> None:
        super().__init__(tile, seed)
        self._requested = parse_tile(tile)

    def setup(self, n_layers: int, d_model: int, fingerprint: str = "") -> None:
        super().setup(n_layers, d_model, fingerprint)
        if self._requested is None:
            self.tile = fold_shape(d_model)
        else:
            h, w = self._requested
            if h * w < d_model:
                raise ReducerError(f"neurons: tile {h}x{w} holds {h * w} values, fewer than d_model={d_model}")
            self.tile = (h, w)

    @property
    def spec(self) -> dict[str, Any]:
        return {**super().spec, "n_values": self.d_model}

    def transform(self, x: Any, signal: str) -> Any:
        import torch

        self._check(x)
        n = x.shape[0]
        k = self.tile[0] * self.tile[1]
        y = x.float()
        if k > self.d_model:
            y = torch.nn.functional.pad(y, (0, k - self.d_model))
        return y.reshape(n, self.n_layers, *self.tile)
