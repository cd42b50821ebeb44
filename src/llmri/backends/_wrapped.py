"""A model object llmri can capture from, around a wrapper the user already built (a
TransformerLens bridge, an nnsight model): the LoadedModel-shaped view the capture needs."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

_BUILD_LOCK = threading.Lock()
_FINGERPRINTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
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
        from ..models import describe_model

        return {**describe_model(self), "wrapper": f"{type(self.wrapper).__module__}.{type(self.wrapper).__name__}"}

    def __repr__(self) -> str:
        return f"<WrappedModel {self.name} via {self.llmri_backend} layers={self.n_layers} d_model={self.d_model}>"


def hidden_size(config: Any) -> int:
    for key in ("hidden_size", "n_embd", "d_model"):
        v = getattr(config, key, None)
        if isinstance(v, int):
            return v
    raise ValueError("the model config names no hidden size (hidden_size / n_embd / d_model)")


_ORIGINAL = re.compile(r"(^|\.)_original_component(?=\.|$)")


def module_fingerprint(module: Any, renamed: bool = False) -> str:
    """:func:`weights_fingerprint` of a transformers module, computed once per module object."""
    try:
        return _FINGERPRINTS[module]
    except (KeyError, TypeError):
        pass
    names = hf_param_names(module.config) if renamed else None
    fp = weights_fingerprint(module.config, offloaded_state(module), names)
    try:
        _FINGERPRINTS[module] = fp
    except TypeError:  # not weak-referenceable
        pass
    return fp


def offloaded_state(module: Any) -> dict[str, Any]:
    """``module.state_dict()`` with the tensors accelerate offloaded (meta here, on disk or in CPU
    memory there) read back from its hooks' weights maps, one at a time, so an offloaded model
    gets the fingerprint of the same weights loaded whole."""
    state = module.state_dict()
    maps = {
        name: wm
        for name, m in module.named_modules()
        if (wm := getattr(getattr(m, "_hf_hook", None), "weights_map", None)) is not None
    }
    if not maps:
        return state
    for key, t in state.items():
        if not getattr(t, "is_meta", False):
            continue
        parts = key.split(".")
        for cut in range(len(parts) - 1, -1, -1):
            wm = maps.get(".".join(parts[:cut]))
            if wm is not None:
                try:
                    state[key] = wm[".".join(parts[cut:])]
                except KeyError:
                    continue
                break
    return state


def weights_fingerprint(config: Any, state: dict[str, Any], hf_names: set[str] | None = None) -> str:
    """:func:`llmri.models.fingerprint` for a model whose modules a wrapper renamed: bridge
    names (``x._original_component.y``) are mapped back to the Hugging Face ones (``x.y``), so
    the same weights give the same fingerprint whichever object holds them. Models on the meta
    device (nnsight's remote models) have no weights here: their fingerprint is the config's."""
    from ..models import fingerprint

    renamed: dict[str, Any] = {}
    for k, v in state.items():
        name = _ORIGINAL.sub("", k).lstrip(".")
        if (hf_names is None or name in hf_names) and name not in renamed:
            renamed[name] = v
    if any(getattr(v, "is_meta", False) for v in renamed.values()):
        cfg = json.dumps(config.to_dict(), sort_keys=True, default=str)
        return "cfg-" + hashlib.sha256(cfg.encode()).hexdigest()[:12]

    class _View:
        pass

    cfg_dict = config.to_dict()
    if hf_names is not None:
        # TransformerLens boots with output_attentions=True, a run-time flag, not the model's identity.
        cfg_dict["output_attentions"] = False
    view = _View()
    view.config = _View()  # type: ignore[attr-defined]
    view.config.to_dict = lambda: dict(cfg_dict)  # type: ignore[attr-defined]
    view.state_dict = lambda: renamed  # type: ignore[attr-defined]
    return fingerprint(view)


def hf_param_names(config: Any) -> set[str] | None:
    """The state-dict names transformers gives this config's causal LM (built on the meta device)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return set(model.state_dict())
    except Exception:  # noqa: BLE001 - an unknown architecture: fall back to every renamed name
        return None


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
