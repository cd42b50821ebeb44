"""``random``: a fixed, seeded Gaussian projection d_model -> H*W (Johnson-Lindenstrauss)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import REDUCERS, Reducer


@REDUCERS.register("random")
class RandomProjection(Reducer):
    """A ``d_model x H*W`` matrix with N(0, 1/k) entries drawn from
    ``torch.Generator().manual_seed(seed)``; squared norms and pairwise distances are preserved in
    expectation, within JL bounds.

    By default every layer (and signal) is projected by the *same* matrix: the residual stream is
    one space that all layers read from and write to, so a direction keeps its pixel pattern from
    layer to layer and the user can follow it through depth. It is also ~5x faster at decode time
    (one 0.6 MB matrix stays in cache instead of streaming 30 x 0.6 MB per token). With
    ``per_layer=True`` each layer gets its own independent matrix (drawn in layer order from the
    same generator). All layers and signals are reduced in one matmul either way.
    """

    kind = "random"

    def __init__(self, tile: Any = None, seed: int = 0, per_layer: bool = False) -> None:
        super().__init__(tile, seed)
        self.per_layer = bool(per_layer)
        self._proj: Any = None  # Tensor [d_model, k], or [layers, d_model, k] per layer

    def setup(self, n_layers: int, d_model: int, fingerprint: str = "") -> None:
        import torch

        super().setup(n_layers, d_model, fingerprint)
        k = self.tile[0] * self.tile[1]
        g = torch.Generator().manual_seed(self.seed)
        shape = (n_layers, d_model, k) if self.per_layer else (d_model, k)
        self._proj = torch.randn(*shape, generator=g, dtype=torch.float32) / k**0.5

    @property
    def spec(self) -> dict[str, Any]:
        return {**super().spec, "per_layer": self.per_layer}

    def transform(self, x: Any, signal: str) -> Any:
        self._check(x)
        proj = self._proj
        if proj.device != x.device or proj.dtype != x.dtype:
            proj = self._proj = proj.to(device=x.device, dtype=x.dtype)
        n = x.shape[0]
        if self.per_layer:
            y = (x.transpose(0, 1) @ proj).transpose(0, 1)  # [n, L, k]
        else:
            y = x.reshape(n * self.n_layers, self.d_model) @ proj
        return y.float().reshape(n, self.n_layers, *self.tile)

    def transform_many(self, xs: dict[str, Any]) -> dict[str, Any]:
        # One matmul for all signals: the projection is read from memory once per token.
        if len(xs) <= 1:
            return {s: self.transform(x, s) for s, x in xs.items()}
        import torch

        names = list(xs)
        for x in xs.values():
            self._check(x)
        sizes = [xs[s].shape[0] for s in names]
        x = torch.cat([xs[s] for s in names], dim=0)
        y = self.transform(x, names[0])
        return dict(zip(names, torch.split(y, sizes, dim=0), strict=True))

    def transform_stacked(self, x: Any, signals: list[str]) -> Any:
        # the rows transform_many's concatenation gives, without the copy: one matmul for all
        n_sig, n = int(x.shape[0]), int(x.shape[1])
        y = self.transform(x.reshape(n_sig * n, *x.shape[2:]), signals[0])
        return y.reshape(n_sig, n, *y.shape[1:])

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}  # fully determined by the spec (seed, shape, per_layer)
