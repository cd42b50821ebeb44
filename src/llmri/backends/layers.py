"""``layers=``: a backend that records only some of its model's layers (``LayerSubset``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._errors import CaptureError
from .base import Backend, LensHead, Step


def layer_indices(layers: Sequence[int], n_layers: int) -> list[int]:
    """``layers`` (negative from the end) as indices into ``n_layers`` layers; one line for one out of range."""
    out: list[int] = []
    for i in layers:
        j = int(i) + n_layers if int(i) < 0 else int(i)
        if not 0 <= j < n_layers:
            raise CaptureError(f"layers: {i} is out of range (the model has {n_layers} layers, 0..{n_layers - 1})")
        if j not in out:
            out.append(j)
    return out


class LayerSubset(Backend):
    """``inner`` recording only the layers ``indices`` (in that order): its steps' activations,
    attention weights, layer names and signal modules cut to them. Interventions and the lens go
    to ``inner`` (an intervention names the model's own layers)."""

    def __init__(self, inner: Backend, layers: Sequence[int]) -> None:
        self.inner = inner
        self.indices = layer_indices(layers, inner.n_layers)
        self.name = inner.name  # type: ignore[misc]
        self.provides = inner.provides  # type: ignore[misc]
        self.supports_attention = inner.supports_attention  # type: ignore[misc]
        self.supports_interventions = inner.supports_interventions  # type: ignore[misc]
        self.loaded = inner.loaded
        self.signals_requested = inner.signals_requested
        self.signals = inner.signals

    @property
    def layer_names(self) -> list[str]:
        names = self.inner.layer_names
        return [names[i] for i in self.indices]

    @property
    def d_model(self) -> int:
        return self.inner.d_model

    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True, **kw: Any) -> Step:
        import torch

        s = self.inner.step(input_ids, cache, logits=logits, **kw)
        idx = torch.tensor(self.indices, dtype=torch.long)
        stacked = None
        if s.stacked is not None:
            stacked = s.stacked.index_select(2, idx.to(s.stacked.device))
            acts = dict(zip(s.acts, stacked.unbind(0), strict=True))
        else:
            acts = {k: v.index_select(1, idx.to(v.device)) for k, v in s.acts.items()}
        weights = None if s.attn_weights is None else [s.attn_weights[i] for i in self.indices]
        return Step(logits=s.logits, acts=acts, cache=s.cache, attn_weights=weights, stacked=stacked)

    def lens_head(self) -> LensHead:
        return self.inner.lens_head()

    @property
    def signal_modules(self) -> dict[str, list[str | None]]:
        return {s: [v[i] for i in self.indices] for s, v in self.inner.signal_modules.items()}

    @property
    def frame_thread(self) -> bool:
        return self.inner.frame_thread

    def torch_module(self) -> Any:
        return self.inner.torch_module()

    def blocks(self) -> list[Any]:
        blocks = self.inner.blocks()
        return [blocks[i] for i in self.indices] if blocks else []

    def intervene(self, plan: Any) -> None:
        self.inner.intervene(plan)

    def close(self) -> None:
        self.inner.close()
