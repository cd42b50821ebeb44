"""``hf``: PyTorch forward hooks on a Hugging Face transformers causal LM."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from ..._errors import CaptureError
from ...frame import SIGNALS
from ..base import BACKENDS, Backend, LensHead, Step
from ..wrapped import hidden_size
from .edits import check_sites, edit_hooks
from .hooks import eval_mode, hooked
from .layout import Layout, describe, find_layout, get, pick, residual_arg, text_config

#: The forward argument (and output field) that carries the cache, by transformers generation.
_CACHE_KWS = ("cache", "past_key_values", "cache_params", "state")


def _is_empty(cache: Any) -> bool:
    """Whether a transformers cache holds nothing after a forward (the model did not use it)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return False
    return not any(getattr(layer, "keys", None) is not None and layer.keys.numel() > 0 for layer in layers) and not any(
        getattr(layer, "conv_states", None) is not None or getattr(layer, "recurrent_states", None) is not None
        for layer in layers
    )


class Replay:
    """The "cache" of a model that keeps none (GPT-1): the ids so far, run again whole each step."""

    def __init__(self, ids: Any) -> None:
        self.ids = ids

    def get_seq_length(self) -> int:
        return int(self.ids.shape[-1])


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
    decoder = get(model, where) if where else model
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
    """The attention module of a decoder block, or ``None`` for a block without one (a state-space
    or linear-attention mixer has no attention weights)."""
    for mod in layer.children():
        cls = type(mod).__name__
        if "Attention" in cls and "Linear" not in cls:
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
def eager_attention(model: Any, memo: dict[str, Any] | None = None) -> Iterator[None]:
    """``model`` runs eager attention (the one that materialises its weights) inside the block.

    Switched with transformers' ``set_attn_implementation("eager")``; restored in ``finally`` by
    writing back each config's own setting (``set_attn_implementation`` would turn an unset one
    into an explicit value). ``memo`` (a dict the caller keeps for one model): the configs and the
    settings the first switch gave, written straight back on later switches (walking the model's
    modules and configs each step cost ~1 ms).
    """
    memo = {} if memo is None else memo
    configs = memo.get("configs")
    if configs is None:
        configs = memo["configs"] = list(_configs(model))
    saved = [(cfg, cfg._attn_implementation_internal) for cfg in configs]
    try:
        eager = memo.get("eager")
        if eager is not None and [v for _, v in saved] == memo["before"]:
            for cfg, value in eager:
                cfg._attn_implementation_internal = value
        elif model.config._attn_implementation != "eager":
            model.set_attn_implementation("eager")
            if model.config._attn_implementation != "eager":  # transformers declined, with a warning
                raise CaptureError(
                    f"hf: {type(model).__name__} cannot switch to eager attention at run time: attention weights "
                    "are not available (load it with attn_implementation='eager')"
                )
            memo["before"] = [v for _, v in saved]
            memo["eager"] = [(cfg, cfg._attn_implementation_internal) for cfg in configs]
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
class HFBackend(Backend):
    """Forward hooks on each decoder block (``resid``), its token-mixing sub-layer (``attn``:
    attention, or the state-space / linear-attention mixer a layer has instead) and its MLP
    (``mlp``: dense or mixture of experts), found for the architectures transformers ships or
    named with ``hook_points`` (``{signal: "path.{i}.module"}``, or a list of paths per layer).

    Hooks are registered for the duration of one ``step`` only, so no state is left on the model
    between steps, after an exception, or when the caller stops early. Each hooked output must
    hold a ``[1, n, d_model]`` vector (tuples, ModelOutputs and a flattened ``[n, d_model]`` are
    read); anything else is an error naming the module. A layer without a module for a signal
    records zeros there (``signal_modules`` says ``None``); a signal no layer has is an error when
    asked for, else left out.
    """

    name = "hf"
    provides = SIGNALS
    supports_attention = True
    supports_hook_points = True
    supports_interventions = True

    def __init__(
        self, model: Any, signals: Sequence[str] | str | None = None, *, hook_points: dict[str, Any] | None = None
    ) -> None:
        super().__init__(model, signals)
        self.model = model.model
        self._d_model = hidden_size(text_config(self.model.config))
        self._hook_points = hook_points
        self._plan: Any = None  # the interventions (intervene())
        self._edit_points: dict[str, Any] = {}
        self.layout: Layout = find_layout(
            self.model, self.signals, self._d_model, requested=self.signals_requested, hook_points=hook_points
        )
        self.signals = [s for s in self.signals if s in self.layout.points]
        self._layers_path = self.layout.layers_path
        self._blocks = list(self.layout.blocks)
        self._names = [p.path if p else "" for p in self.layout.points.get("resid") or []] or [
            f"{self._layers_path}.{i}" for i in range(len(self._blocks))
        ]
        self._attn_mods = [find_attention(b) for b in self._blocks]
        self._modules = list(self.model.modules())  # for eval_mode, once
        self._eager_memo: dict[str, Any] = {}  # for eager_attention
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = next((k for k in _CACHE_KWS if k in params), "")  # "": none, replay the sequence
        self._has_use_cache = "use_cache" in params
        self._has_keep = "logits_to_keep" in params
        self._own_cache: bool | None = None  # whether llmri makes the cache (a model that returns none)
        # The decoder alone (the module holding the layers), for forwards whose logits nobody
        # reads (the last generated token, calibration): it skips the LM head, ~20% of a small
        # model's forward. Used only where it takes ids and a cache the same way.
        self._decoder: Any = None
        self._decoder_cache_kw = ""
        where = self._layers_path.rsplit(".", 1)[0] if "." in self._layers_path else ""
        decoder = get(self.model, where) if where else None
        if decoder is not None and decoder is not self.model and callable(getattr(decoder, "forward", None)):
            dparams = inspect.signature(decoder.forward).parameters
            kw = next((k for k in _CACHE_KWS if k in dparams), "")
            if "input_ids" in dparams and kw and "use_cache" in dparams:
                self._decoder, self._decoder_cache_kw = decoder, kw

    @property
    def layer_names(self) -> list[str]:
        return self._names

    @property
    def signal_modules(self) -> dict[str, list[str | None]]:
        return self.layout.paths()

    def torch_module(self) -> Any:
        return self.model

    def blocks(self) -> list[Any]:
        return list(self._blocks)

    @property
    def d_model(self) -> int:
        return self._d_model

    def lens_head(self) -> LensHead:
        """``<layers' parent>.norm`` (or ``ln_f``, ``final_layer_norm``, ...) and
        ``get_output_embeddings()``, with the logit scaling / soft-capping the model's config names."""
        return find_lens_head(self.model, self._layers_path)

    def intervene(self, plan: Any) -> None:
        """Apply ``plan`` (a :class:`~llmri.interventions.Plan`) in every later step; ``None``: none.
        A signal the capture does not record is still found for its edits."""
        points = dict(self.layout.points)
        missing = [] if plan is None else sorted({s for s, _ in plan.sites()} - set(points))
        if missing:
            extra = find_layout(self.model, missing, self._d_model, requested=True, hook_points=self._hook_points)
            points.update(extra.points)
        if plan is not None:
            check_sites(plan, points)
        self._plan, self._edit_points = plan, points

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True, attention: bool = False) -> Step:
        """One forward; ``attention=True`` runs it with eager attention (switched for this step
        only) and returns ``Step.attn_weights``: per layer float32 ``[heads, n, n_total]``, ``None``
        for layers without an attention module."""
        import torch

        n_new = int(input_ids.shape[-1])
        if not self._cache_kw:  # a model without a cache runs the whole sequence every step
            ids_so_far = input_ids if cache is None else torch.cat([cache.ids, input_ids.to(cache.ids.device)], 1)
            input_ids, cache = ids_so_far, None
        n_layers, n, d = len(self._names), int(input_ids.shape[-1]), self._d_model
        fresh = cache is None and bool(self._own_cache)
        if fresh:
            cache = self._new_cache()
        bufs: dict[str, list[Any]] = {s: [None] * n_layers for s in self.signals}
        weights: list[Any] = [None] * n_layers
        if attention and all(m is None for m in self._attn_mods):
            raise CaptureError(f"hf: {type(self.model).__name__} has no attention modules to read weights from")
        n_total = n + (int(cache.get_seq_length()) if attention and cache is not None else 0)

        def keep_weights(i: int):  # noqa: ANN202
            def hook(_mod: Any, _args: Any, _kwargs: Any, out: Any) -> None:
                weights[i] = attention_weights(out, n_total, i)

            return hook

        def make(sig: str, i: int, path: str, residual: str | None):  # noqa: ANN202
            slot = bufs[sig]

            def hook(mod: Any, args: Any, kwargs: Any, out: Any) -> None:
                t = pick(out, n, d)  # an inference tensor (the forward runs in inference_mode)
                if t is None:
                    raise CaptureError(
                        f"hf: {path} ({type(mod).__name__}) returned {describe(out)}, not the [1, {n}, {d}] "
                        f"(batch, positions, d_model) vector the {sig!r} signal reads: name the module that "
                        f"outputs it with hook_points={{{sig!r}: '...{{i}}...'}}"
                    )
                if residual is not None:  # the module returns residual + its output: undo the sum
                    t = t - residual_arg(mod, residual, args, kwargs).reshape(t.shape)
                # a copy: the forward may write into the output afterwards (Falcon adds attention
                # into the MLP's output in place)
                slot[i] = t.clone()

            return hook

        hooks: list[tuple[Any, Any]] = []
        if self._plan is not None:  # first: the capture's hooks on the same module read the edited output
            start = 0 if cache is None else int(cache.get_seq_length())  # the step's first absolute position
            hooks += edit_hooks(self._plan, self._edit_points, n, d, start)
        for sig, pts in self.layout.points.items():
            if sig in bufs:
                hooks += [(pt.module, make(sig, i, pt.path, pt.residual)) for i, pt in enumerate(pts) if pt is not None]
        if attention:
            hooks += [(mod, keep_weights(i)) for i, mod in enumerate(self._attn_mods) if mod is not None]
        ids = input_ids.to(self.loaded.device)
        eager = eager_attention(self.model, self._eager_memo) if attention else nullcontext()
        with hooked(hooks), torch.inference_mode(), eval_mode(self.model, self._modules), eager:
            if not logits and self._decoder is not None:
                out = self._decoder(input_ids=ids, **{self._decoder_cache_kw: cache, "use_cache": True})
            else:
                kw: dict[str, Any] = {self._cache_kw: cache} if self._cache_kw else {}
                if self._has_use_cache:
                    kw["use_cache"] = bool(self._cache_kw)
                if not logits and self._has_keep:
                    kw["logits_to_keep"] = 1
                out = self.model(input_ids=ids, **kw)
        new_cache = next((c for c in (getattr(out, k, None) for k in _CACHE_KWS) if c is not None), None)
        if not self._cache_kw:
            new_cache = Replay(input_ids)
        elif new_cache is None:
            if cache is None and self._own_cache is None:
                # The model keeps its cache to itself (RecurrentGemma): run again with one of ours.
                self._own_cache = True
                return self.step(input_ids, None, logits=logits, attention=attention)
            if fresh and _is_empty(cache):
                # It keeps no cache at all (a BERT-style model that is not a decoder): replay.
                self._cache_kw = ""
                return self.step(input_ids, None, logits=logits, attention=attention)
            new_cache = cache  # updated in place
        missing = [s for s, b in bufs.items() if all(t is None for t in b)]
        if missing:
            raise CaptureError(f"hf: the forward did not run the hooked modules for {', '.join(missing)}")
        zeros = None
        for s, b in bufs.items():
            for i, t in enumerate(b):
                if t is None:
                    pt = self.layout.points[s][i]
                    if pt is not None:
                        raise CaptureError(f"hf: the forward did not run {pt.path} (signal {s!r})")
                    ref = next(x for x in b if x is not None)
                    zeros = zeros if zeros is not None and zeros.dtype == ref.dtype else torch.zeros_like(ref)
                    b[i] = zeros
        stacked = None
        if n == 1:  # a decode step: every signal in one stack, [1, 1, S * L, d] is [S, 1, L, d]
            stacked = torch.stack([t for b in bufs.values() for t in b], dim=2).view(len(bufs), 1, n_layers, -1)
            acts = dict(zip(bufs, stacked.unbind(0), strict=True))
        else:
            acts = {s: torch.stack(b, dim=2)[0, -n_new:] for s, b in bufs.items()}  # [1, n, L, d] -> [n, L, d]
        lg = out.logits[0, -n_new:].float() if logits else None
        if attention and not self._cache_kw:
            weights = [w if w is None else w[:, -n_new:] for w in weights]
        return Step(logits=lg, acts=acts, cache=new_cache, attn_weights=weights if attention else None, stacked=stacked)
