"""A model object llmri can capture from, around a wrapper the user already built (a
TransformerLens bridge, an nnsight model): the LoadedModel-shaped view the capture needs."""

from __future__ import annotations

import copy
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

_BUILD_LOCK = threading.Lock()
_BUILT: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class WrappedModel:
    """Stands in for :class:`~llmri.models.LoadedModel` when the user passes their own wrapper.

    ``wrapper`` is the bridge / nnsight model, ``model`` the Hugging Face module it runs,
    ``llmri_backend`` the backend that records it; ``options`` are passed to that backend
    (``remote`` for nnsight).
    """

    wrapper: Any
    model: Any
    tokenizer: Any
    name: str
    llmri_backend: str
    n_layers: int
    d_model: int
    fingerprint: str = ""
    path: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Any:
        return getattr(self.model, "config", None)

    @property
    def device(self) -> Any:
        try:
            return next(self.model.parameters()).device
        except (StopIteration, AttributeError):
            return "cpu"

    @property
    def dtype(self) -> Any:
        try:
            return next(self.model.parameters()).dtype
        except (StopIteration, AttributeError):
            return None

    def describe(self) -> dict[str, Any]:
        from ..models.identity import describe_model

        return {**describe_model(self), "wrapper": f"{type(self.wrapper).__module__}.{type(self.wrapper).__name__}"}

    def __repr__(self) -> str:
        return f"<WrappedModel {self.name} via {self.llmri_backend} layers={self.n_layers} d_model={self.d_model}>"


def hidden_size(config: Any) -> int:
    for key in ("hidden_size", "n_embd", "d_model"):
        v = getattr(config, key, None)
        if isinstance(v, int):
            return v
    raise ValueError("the model config names no hidden size (hidden_size / n_embd / d_model)")


def cached_for(module: Any, key: str, build: Any) -> Any:
    """``build()`` once per model object and ``key``, kept while ``module`` lives (a wrapper built
    around it must not hold ``module`` itself, or it would never be freed)."""
    with _BUILD_LOCK:
        slot = _BUILT.get(module)
        if slot is None:
            slot = _BUILT[module] = {}
        if key not in slot:
            slot[key] = build()
        return slot[key]


def weight_sharing_copy(module: Any) -> Any:
    """A copy of ``module``'s tree of modules whose parameters and buffers *are* ``module``'s
    tensors: no weight is copied (the copy costs its module objects only), and what a wrapper
    does to the copy's structure (replacing submodules, installing forwards, switching the
    attention implementation in its config) leaves ``module`` as it was. The copy is in eval mode."""
    import torch

    memo: dict[int, Any] = {}
    for m in module.modules():
        tensors = [*m._parameters.values(), *m._buffers.values()]
        tensors += [v for v in vars(m).values() if isinstance(v, torch.Tensor)]
        for t in tensors:
            if t is not None:
                memo[id(t)] = t
        weights_map = getattr(getattr(m, "_hf_hook", None), "weights_map", None)
        if weights_map is not None:  # accelerate's offloaded weights: shared, not copied
            memo[id(weights_map)] = weights_map
    shell = copy.deepcopy(module, memo)
    shell.eval()
    return shell
