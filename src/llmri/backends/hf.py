"""``hf``: PyTorch forward hooks on a Hugging Face transformers causal LM."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from .._errors import CaptureError
from ..frame import SIGNALS
from .base import BACKENDS, Capture, Step

# Where the decoder blocks and their sub-layers live, for the architectures transformers ships.
_LAYER_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "transformer.blocks",
    "model.language_model.layers",
)
_SUBMODULES = {"attn": ("self_attn", "attn", "attention", "self_attention"), "mlp": ("mlp", "feed_forward", "ffn")}


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_layers(model: Any) -> tuple[str, Any]:
    for path in _LAYER_PATHS:
        layers = _get(model, path)
        if layers is not None and hasattr(layers, "__len__") and len(layers) > 0:
            return path, layers
    raise CaptureError(f"{type(model).__name__}: cannot find the decoder layers (looked for {', '.join(_LAYER_PATHS)})")


def find_submodule(layer: Any, signal: str, where: str) -> tuple[str, Any]:
    for name in _SUBMODULES[signal]:
        mod = getattr(layer, name, None)
        if mod is not None:
            return name, mod
    looked = ", ".join(f"{where}.{n}" for n in _SUBMODULES[signal])
    raise CaptureError(f"no mapping for signal {signal!r} in this architecture: looked for {looked}")


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


@BACKENDS.register("hf")
class HFHooksCapture(Capture):
    """Forward hooks on each decoder block (``resid``), its attention (``attn``) and its MLP
    (``mlp``). Hooks are registered for the duration of one ``step`` only, so no state is left on
    the model between steps, after an exception, or when the caller stops early."""

    name = "hf"
    provides = SIGNALS

    def __init__(self, model: Any, signals: Sequence[str] = SIGNALS) -> None:
        super().__init__(model, signals)
        self.model = model.model
        path, layers = find_layers(self.model)
        self._layers_path = path
        self._targets: dict[str, list[Any]] = {}
        for sig in self.signals:
            if sig == "resid":
                self._targets[sig] = list(layers)
            else:
                self._targets[sig] = [find_submodule(layer, sig, f"{path}.{i}")[1] for i, layer in enumerate(layers)]
        self._names = [f"{path}.{i}" for i in range(len(layers))]
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._has_keep = "logits_to_keep" in params
        # The decoder alone (the module holding the layers), for forwards whose logits nobody
        # reads (the last generated token, calibration): it skips the LM head, ~20% of a small
        # model's forward. Used only where it takes ids and a cache the same way.
        self._decoder: Any = None
        self._decoder_cache_kw = ""
        decoder = _get(self.model, path.rsplit(".", 1)[0])
        if decoder is not None and decoder is not self.model and callable(getattr(decoder, "forward", None)):
            dparams = inspect.signature(decoder.forward).parameters
            kw = next((k for k in ("cache", "past_key_values") if k in dparams), "")
            if "input_ids" in dparams and kw and "use_cache" in dparams:
                self._decoder, self._decoder_cache_kw = decoder, kw

    @property
    def layer_names(self) -> list[str]:
        return self._names

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True) -> Step:
        import torch

        bufs: dict[str, list[Any]] = {s: [None] * len(self._names) for s in self.signals}
        handles = []

        def make(sig: str, i: int):  # noqa: ANN202
            slot = bufs[sig]

            def hook(_mod: Any, _inp: Any, out: Any) -> None:
                slot[i] = _first(out)  # an inference tensor (the forward runs in inference_mode)

            return hook

        try:
            for sig, mods in self._targets.items():
                for i, mod in enumerate(mods):
                    handles.append(mod.register_forward_hook(make(sig, i)))
            ids = input_ids.to(self.loaded.device)
            with torch.inference_mode():
                if not logits and self._decoder is not None:
                    out = self._decoder(input_ids=ids, **{self._decoder_cache_kw: cache, "use_cache": True})
                else:
                    kw: dict[str, Any] = {self._cache_kw: cache, "use_cache": True}
                    if not logits and self._has_keep:
                        kw["logits_to_keep"] = 1
                    out = self.model(input_ids=ids, **kw)
        finally:
            for h in handles:
                h.remove()
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        missing = [s for s, b in bufs.items() if any(t is None for t in b)]
        if missing:
            raise CaptureError(f"hf: the forward did not run the hooked modules for {', '.join(missing)}")
        acts = {s: torch.stack(b, dim=2)[0] for s, b in bufs.items()}  # [1, n, L, d] -> [n, L, d]
        lg = out.logits[0].float() if logits else None
        return Step(logits=lg, acts=acts, cache=new_cache)
