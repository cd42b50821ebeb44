"""The Reducer interface: ``[tokens, layers, d_model]`` activations -> ``[tokens, layers, H, W]`` tiles."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from .._errors import ReducerError
from .._registry import Registry

REDUCERS: Registry[type[Reducer]] = Registry("reducer")


def parse_tile(tile: Any) -> tuple[int, int] | None:
    """``"16x16"``, ``(16, 16)``, ``16`` or ``None`` -> ``(H, W)``; a bad shape raises ReducerError."""
    if tile is None:
        return None
    try:
        if isinstance(tile, str):
            parts = tile.lower().replace("×", "x").split("x")
            h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
            if len(parts) > 2:
                raise ValueError
        elif isinstance(tile, int):
            h = w = tile
        else:
            h, w = (int(v) for v in tile)
    except (ValueError, TypeError):
        raise ReducerError(f"bad tile shape {tile!r}: use HxW, e.g. 16x16") from None
    if not (1 <= h <= 1024 and 1 <= w <= 1024):
        raise ReducerError(f"bad tile shape {tile!r}: H and W must be between 1 and 1024")
    return h, w


class Reducer(ABC):
    """Maps each layer's activation vector to a small signed 2D tile.

    Lifecycle: ``setup(n_layers, d_model, fingerprint)`` once the model is known; ``fit(acts)``
    for reducers that learn (``supports_fit``); then ``transform`` is a pure function of the
    input, so the same spec and state on the same activations give the same tiles. ``spec`` is a
    JSON dict that fully describes the reducer; ``state_dict()`` holds learned arrays (saved with
    each session). ``scales`` holds per-signal, per-layer robust scales (99th percentile of
    ``|tile|`` on calibration text) that a client uses to map values to colour consistently.
    """

    kind: ClassVar[str] = ""
    supports_fit: ClassVar[bool] = False

    def __init__(self, tile: Any = None, seed: int = 0) -> None:
        self.tile = parse_tile(tile) or (16, 16)
        self.seed = int(seed)
        self.n_layers = 0
        self.d_model = 0
        self.fingerprint = ""
        self.scales: dict[str, list[float]] = {}

    # -- lifecycle ----------------------------------------------------------------------
    def setup(self, n_layers: int, d_model: int, fingerprint: str = "") -> None:
        self.n_layers, self.d_model, self.fingerprint = int(n_layers), int(d_model), fingerprint

    def fit(self, acts: dict[str, Any]) -> None:  # noqa: B027 - optional
        """Learn from calibration activations ``{signal: Tensor[n, layers, d_model]}``."""

    @property
    def fitted(self) -> bool:
        return True

    @abstractmethod
    def transform(self, x: Any, signal: str) -> Any:
        """``x``: float Tensor ``[n, layers, d_model]`` -> float32 Tensor ``[n, layers, H, W]``."""

    def transform_many(self, xs: dict[str, Any]) -> dict[str, Any]:
        """Transform several signals at once (``{signal: [n, layers, d]}``); reducers whose
        projection does not depend on the signal override this to read their weights once."""
        return {s: self.transform(x, s) for s, x in xs.items()}

    def transform_stacked(self, x: Any, signals: list[str]) -> Any:
        """``x``: Tensor ``[signals, n, layers, d_model]`` (``signals`` in order) -> float32
        ``[signals, n, layers, H, W]``; the same values as :meth:`transform_many`."""
        import torch

        out = self.transform_many({s: x[i] for i, s in enumerate(signals)})
        return torch.stack([out[s] for s in signals])

    # -- description --------------------------------------------------------------------
    @property
    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tile": list(self.tile),
            "seed": self.seed,
            "k": self.tile[0] * self.tile[1],
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "model_fingerprint": self.fingerprint,
        }

    def spec_key(self) -> str:
        return hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()[:16]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:  # noqa: B027 - optional
        pass

    def _check(self, x: Any) -> None:
        if x.ndim != 3 or x.shape[1] != self.n_layers or x.shape[2] != self.d_model:
            raise ReducerError(
                f"{self.kind}: expected activations [n, {self.n_layers}, {self.d_model}], got {tuple(x.shape)}"
            )


def make_reducer(kind: str | Reducer, **kw: Any) -> Reducer:
    if isinstance(kind, Reducer):
        return kind
    try:
        factory = REDUCERS.get(kind)
    except KeyError as exc:
        raise ReducerError(str(exc.args[0])) from None
    return factory(**kw)
