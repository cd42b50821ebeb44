"""``hf``: PyTorch forward hooks on a Hugging Face transformers causal LM."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from .._errors import CaptureError
from ..frame import SIGNALS
from .base import BACKENDS, Capture, LensHead, Step

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


# The final norm, on the module that holds the decoder layers, for the architectures transformers ships.
_FINAL_NORMS = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f", "final_norm", "ln_final")

# What a causal LM's forward does to its LM head's output, by config field: the field, the model
# types it means that for (prefixes of the text config's ``model_type``; ``None``: any), and the
# operation. The same field means different things in different families (Granite divides by
# ``logits_scaling``, HyperCLOVA X multiplies; MPT's ``logit_scale`` is unused), hence the table.
_LOGIT_POSTPROCESS: tuple[tuple[str, tuple[str, ...] | None, str], ...] = (
    ("logit_scale", ("cohere",), "mul"),
    ("logits_scaling", ("granite",), "div"),
    ("logits_scaling", ("hyperclovax",), "mul"),
    ("final_logit_softcapping", None, "softcap"),
    ("unpadded_vocab_size", None, "cut"),
)


def text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def logit_postprocess(config: Any) -> Callable[[Any], Any] | None:
    """The function a transformers causal LM applies to its LM head's output (``None``: none)."""
    cfg = text_config(config)
    model_type = str(getattr(cfg, "model_type", "") or "")
    ops: list[tuple[str, float]] = []
    for field, families, op in _LOGIT_POSTPROCESS:
        value = getattr(cfg, field, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if families is not None and not model_type.startswith(families):
            continue
        if (op in ("mul", "div") and value == 1) or (op == "softcap" and value <= 0):
            continue
        ops.append((op, float(value) if op != "cut" else int(value)))
    if not ops:
        return None

    def postprocess(logits: Any) -> Any:
        import torch

        for op, value in ops:
            if op == "mul":
                logits = logits * value
            elif op == "div":
                logits = logits / value
            elif op == "softcap":
                logits = torch.tanh(logits / value) * value
            elif value < logits.shape[-1]:
                logits = logits[..., : int(value)]
        return logits

    return postprocess


def find_lens_head(model: Any, layers_path: str) -> LensHead:
    """The final norm (on the module holding the layers) and the output embedding of ``model``."""
    where = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
    decoder = _get(model, where) if where else model
    unembed = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    found = [n for n in _FINAL_NORMS if decoder is not None and hasattr(decoder, n)]
    if unembed is None or not found:
        what = "unembedding (get_output_embeddings())" if unembed is None else "final norm"
        looked = "" if unembed is None else f" (looked for {', '.join(f'{where}.{n}' for n in _FINAL_NORMS)})"
        raise CaptureError(f"{type(model).__name__}: cannot find the {what}{looked}: lens=True is not available")
    norm = getattr(decoder, found[0])
    project_out = getattr(decoder, "project_out", None)  # OPT-350m: a projection after the norm
    steps = [m for m in (norm, project_out) if m is not None]

    def final(h: Any) -> Any:
        for m in steps:
            h = m(h)
        return h

    return LensHead(norm=final, unembed=unembed, postprocess=logit_postprocess(model.config))


def find_attention(layer: Any) -> Any:
    """The attention module of a decoder block, or ``None`` for a block without one."""
    for name in _SUBMODULES["attn"]:
        mod = getattr(layer, name, None)
        if mod is not None:
            return mod
    return None


def _configs(model: Any) -> Iterator[Any]:
    """Every transformers config of ``model``: its own, each sub-config, each sub-model's."""
    seen: set[int] = set()
    todo = [m.config for m in model.modules() if getattr(m, "config", None) is not None]
    while todo:
        cfg = todo.pop()
        if id(cfg) in seen or not hasattr(cfg, "_attn_implementation_internal"):
            continue
        seen.add(id(cfg))
        yield cfg
        todo.extend(getattr(cfg, k, None) for k in getattr(cfg, "sub_configs", {}) or {})


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """``model`` in eval mode inside the block (no dropout), its modules' training flags put back
    in ``finally``: a model the user wrapped in training mode is left in it."""
    training = [m for m in model.modules() if m.training]
    try:
        for m in training:
            m.training = False
        yield
    finally:
        for m in training:
            m.training = True


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """``model`` runs eager attention (the one that materialises its weights) inside the block.

    Switched with transformers' ``set_attn_implementation("eager")``; restored in ``finally`` by
    writing back each config's own setting (``set_attn_implementation`` would turn an unset one
    into an explicit value).
    """
    saved = [(cfg, cfg._attn_implementation_internal) for cfg in _configs(model)]
    try:
        if model.config._attn_implementation != "eager":
            model.set_attn_implementation("eager")
            if model.config._attn_implementation != "eager":  # transformers declined, with a warning
                raise CaptureError(
                    f"hf: {type(model).__name__} cannot switch to eager attention at run time: attention weights "
                    "are not available (load it with attn_implementation='eager')"
                )
        yield
    finally:
        for cfg, value in saved:
            cfg._attn_implementation_internal = value


def attention_weights(out: Any, n_total: int, layer: int) -> Any:
    """An attention module's weights ``[1, heads, n, keys]`` as float32 ``[heads, n, n_total]``."""
    import torch

    w = out[1] if isinstance(out, tuple) and len(out) > 1 else None
    if not isinstance(w, torch.Tensor) or w.dim() != 4:
        raise CaptureError(f"hf: the attention of layer {layer} returned no weights even with eager attention")
    w = w[0].float()
    if w.shape[-1] < n_total:  # a sliding window keeps the last keys
        w = torch.nn.functional.pad(w, (n_total - w.shape[-1], 0))
    return w


@BACKENDS.register("hf")
class HFHooksCapture(Capture):
    """Forward hooks on each decoder block (``resid``), its attention (``attn``) and its MLP
    (``mlp``). Hooks are registered for the duration of one ``step`` only, so no state is left on
    the model between steps, after an exception, or when the caller stops early."""

    name = "hf"
    provides = SIGNALS
    supports_attention = True

    def __init__(self, model: Any, signals: Sequence[str] = SIGNALS) -> None:
        super().__init__(model, signals)
        self.model = model.model
        path, layers = find_layers(self.model)
        self._layers_path = path
        self._blocks = list(layers)
        self._targets: dict[str, list[Any]] = {}
        for sig in self.signals:
            if sig == "resid":
                self._targets[sig] = list(layers)
            else:
                self._targets[sig] = [find_submodule(layer, sig, f"{path}.{i}")[1] for i, layer in enumerate(layers)]
        self._names = [f"{path}.{i}" for i in range(len(layers))]
        self._attn_mods = [find_attention(layer) for layer in layers]
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

    def torch_module(self) -> Any:
        return self.model

    def blocks(self) -> list[Any]:
        return list(self._blocks)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    def lens_head(self) -> LensHead:
        """``<layers' parent>.norm`` (or ``ln_f``, ``final_layer_norm``, ...) and
        ``get_output_embeddings()``, with the logit scaling / soft-capping the model's config names."""
        return find_lens_head(self.model, self._layers_path)

    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True, attention: bool = False) -> Step:
        """One forward; ``attention=True`` runs it with eager attention (switched for this step
        only) and returns ``Step.attn_weights``: per layer float32 ``[heads, n, n_total]``, ``None``
        for layers without an attention module."""
        import torch

        bufs: dict[str, list[Any]] = {s: [None] * len(self._names) for s in self.signals}
        handles = []
        n_total = (int(cache.get_seq_length()) if cache is not None else 0) + int(input_ids.shape[-1])
        weights: list[Any] = [None] * len(self._names)
        if attention and all(m is None for m in self._attn_mods):
            raise CaptureError(f"hf: {type(self.model).__name__} has no attention modules to read weights from")

        def keep_weights(i: int):  # noqa: ANN202
            def hook(_mod: Any, _inp: Any, out: Any) -> None:
                weights[i] = attention_weights(out, n_total, i)

            return hook

        def make(sig: str, i: int):  # noqa: ANN202
            slot = bufs[sig]

            def hook(_mod: Any, _inp: Any, out: Any) -> None:
                slot[i] = _first(out)  # an inference tensor (the forward runs in inference_mode)

            return hook

        try:
            for sig, mods in self._targets.items():
                for i, mod in enumerate(mods):
                    handles.append(mod.register_forward_hook(make(sig, i)))
            if attention:
                for i, mod in enumerate(self._attn_mods):
                    if mod is not None:
                        handles.append(mod.register_forward_hook(keep_weights(i)))
            ids = input_ids.to(self.loaded.device)
            eager = eager_attention(self.model) if attention else nullcontext()
            with torch.inference_mode(), eval_mode(self.model), eager:
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
        return Step(logits=lg, acts=acts, cache=new_cache, attn_weights=weights if attention else None)
