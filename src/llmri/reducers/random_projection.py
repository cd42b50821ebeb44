"""``random``: a fixed, seeded Gaussian projection per layer (Johnson-Lindenstrauss)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import REDUCERS, Reducer


@REDUCERS.register("random")
class RandomProjection(Reducer):
    """Each layer gets its own ``d_model x H*W`` matrix with N(0, 1/k) entries, drawn from
    ``torch.Generator().manual_seed(seed)``; all layers are projected in one batched matmul.
    Squared norms and pairwise distances are preserved in expectation."""

    kind = "random"

    def __init__(self, tile: Any = None, seed: int = 0) -> None:
        super().__init__(tile, seed)
        self._proj: Any = None  # Tensor [layers, d_model, k]

    def setup(self, n_layers: int, d_model: int, fingerprint: str = "") -> None:
        import torch

        super().setup(n_layers, d_model, fingerprint)
        k = self.tile[0] * self.tile[1]
        g = torch.Generator().manual_seed(self.seed)
        self._proj = torch.randn(n_layers, d_model, k, generator=g, dtype=torch.float32) / k**0.5

    def transform(self, x: Any, signal: str) -> Any:
        self._check(x)
        proj = self._proj
        if proj.device != x.device or proj.dtype != x.dtype:
            proj = self._proj = proj.to(device=x.device, dtype=x.dtype)
        y = (x.transpose(0, 1) @ proj).transpose(0, 1)  # [n, L, k]
        return y.float().reshape(x.shape[0], self.n_layers, *self.tile)

    def transform_many(self, xs: dict[str, Any]) -> dict[str, Any]:
        # One matmul for all signals: the projection (layers x d x k floats) is read from memory
        # once per token instead of once per signal, which is what dominates at decode time.
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

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}  # fully determined by the spec (seed, shape)
