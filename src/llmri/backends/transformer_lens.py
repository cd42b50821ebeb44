"""``transformer-lens``: TransformerLens 4.x ``TransformerBridge`` hook points."""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .._errors import CaptureError, require
from ..frame import SIGNALS
from ..models.identity import module_fingerprint
from .base import BACKENDS, Backend, LensHead, Step
from .hf import logit_postprocess
from .wrapped import WrappedModel, cached_for, weight_sharing_copy

EXTRA = "transformer-lens"
#: The bridge's hook point for each signal in block ``{i}``.
HOOK_POINTS = {
    "resid": "blocks.{i}.hook_resid_post",
    "attn": "blocks.{i}.hook_attn_out",
    "mlp": "blocks.{i}.hook_mlp_out",
}
_CACHE_KEY = "_llmri_tl_bridge"


def _bridge_class() -> Any:
    require("transformer_lens", EXTRA)
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


def is_bridge(obj: Any) -> bool:
    """Whether ``obj`` is a TransformerBridge (without importing TransformerLens when it isn't)."""
    if "transformer_lens" not in sys.modules:
        return False
    try:
        return isinstance(obj, _bridge_class())
    except ImportError:
        return False


def wrap(bridge: Any) -> WrappedModel:
    """The model object llmri captures from, around a bridge the user already booted."""
    hf = bridge.original_model
    tok = getattr(bridge, "tokenizer", None)
    if tok is None:
        raise CaptureError("transformer-lens: this bridge has no tokenizer (boot it with tokenizer=...)")
    fp = module_fingerprint(hf, renamed=True)
    raw = str(getattr(bridge.cfg, "model_name", "") or getattr(hf.config, "_name_or_path", "") or type(hf).__name__)
    local = os.path.isdir(raw)
    return WrappedModel(
        wrapper=bridge,
        model=hf,
        tokenizer=tok,
        name=os.path.basename(raw.rstrip("/\\")) if local else raw,
        path=raw if local else "",
        llmri_backend="transformer-lens",
        n_layers=int(bridge.cfg.n_layers),
        d_model=int(bridge.cfg.d_model),
        fingerprint=fp,
    )


def boot_from_loaded(loaded: Any) -> Any:
    """Boot a bridge around a LoadedModel's transformers model, without copying its weights.

    The bridge replaces the submodules of the model it wraps and switches it to eager attention,
    so it wraps a :func:`weight_sharing_copy` (new module objects, the same parameter and buffer
    tensors): the user's model keeps its modules, forwards and attention implementation, and no
    weight exists twice. The bridge is kept while the transformers model lives.
    """
    TransformerBridge = _bridge_class()
    try:
        return TransformerBridge.boot_transformers(
            str(getattr(loaded, "path", "") or loaded.name),
            hf_model=weight_sharing_copy(loaded.model),
            tokenizer=copy.deepcopy(loaded.tokenizer),
            device=str(loaded.device),
            dtype=loaded.dtype,
        )
    except Exception as exc:  # noqa: BLE001 - an unsupported architecture, mostly
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CaptureError(f"transformer-lens cannot wrap {type(loaded.model).__name__}: {first}") from exc


def _alias_cache(_mod: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    # transformers 5 hands the KV cache to attention as ``cache=``; TransformerLens 4.3's
    # attention bridges look only for ``past_key_values`` and would silently not extend it
    # (every cached step attending to itself alone).
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs = dict(kwargs)
        kwargs["past_key_values"] = kwargs["cache"]
        return args, kwargs
    return None


@BACKENDS.register("transformer-lens")
class TransformerLensBackend(Backend):
    """Hooks on a TransformerBridge's hook points: ``resid`` = ``blocks.N.hook_resid_post``,
    ``attn`` = ``blocks.N.hook_attn_out``, ``mlp`` = ``blocks.N.hook_mlp_out``.

    ``model``: a :class:`~llmri.models.LoadedModel` (a bridge is booted once around a
    weight-sharing copy of its transformers model and kept while that model lives) or the
    wrapped bridge of ``llmri.capture(bridge, ...)``.
    Each ``step`` runs the bridge on the new positions with the transformers KV cache; hooks are
    added for that step only and removed in ``finally`` (hooks the user put on the bridge stay).
    Activations come back in the model's dtype, detached, as ``[n, layers, d_model]``.
    """

    name = "transformer-lens"
    provides = SIGNALS
    supports_interventions = True

    def __init__(self, model: Any, signals: Sequence[str] = SIGNALS) -> None:
        super().__init__(model, signals)
        if isinstance(model, WrappedModel):
            if model.llmri_backend != self.name:
                raise CaptureError(f"transformer-lens cannot record a model wrapped for {model.llmri_backend!r}")
            self.bridge = model.wrapper
        else:
            _bridge_class()
            if getattr(model, "model", None) is None:
                raise CaptureError("transformer-lens needs a transformers model (a LoadedModel or a bridge)")
            self.bridge = cached_for(model.model, _CACHE_KEY, lambda: boot_from_loaded(model))
        hook_dict = self.bridge.hook_dict
        n = int(self.bridge.cfg.n_layers)
        self._points: dict[str, list[Any]] = {}
        for sig in self.signals:
            pts = []
            for i in range(n):
                hp = hook_dict.get(HOOK_POINTS[sig].format(i=i))
                if hp is None:
                    raise CaptureError(
                        f"transformer-lens: no mapping for signal {sig!r} in this architecture: "
                        f"looked for hook point {HOOK_POINTS[sig].format(i=i)!r}"
                    )
                pts.append(hp)
            self._points[sig] = pts
        self._attn = [b.attn for b in self.bridge.blocks if hasattr(getattr(b, "attn", None), "_update_kv_cache")]
        import inspect

        params = inspect.signature(type(self.bridge.original_model).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._n = n
        self._plan: Any = None  # the interventions (intervene())

    @property
    def layer_names(self) -> list[str]:
        return [f"blocks.{i}" for i in range(self._n)]

    @property
    def signal_modules(self) -> dict[str, list[str | None]]:
        return {s: [HOOK_POINTS[s].format(i=i) for i in range(self._n)] for s in self.signals}

    def torch_module(self) -> Any:
        return self.bridge

    def blocks(self) -> list[Any]:
        return list(self.bridge.blocks)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    def lens_head(self) -> LensHead:
        """The bridge's ``ln_final`` and ``unembed`` (the model's own modules, with their hook
        points), with the logit scaling / soft-capping of the transformers forward it runs."""
        norm = getattr(self.bridge, "ln_final", None)
        unembed = getattr(self.bridge, "unembed", None)
        if norm is None or unembed is None:
            raise CaptureError(
                "transformer-lens: this bridge has no ln_final / unembed: the model's final norm / unembedding "
                "cannot be found, lens=True is not available"
            )
        return LensHead(norm=norm, unembed=unembed, postprocess=logit_postprocess(self.bridge.original_model.config))

    def intervene(self, plan: Any) -> None:
        """Apply ``plan`` (a :class:`~llmri.interventions.Plan`) in every later step through the
        bridge's own hooks (``bridge.hooks(...)``, on the same hook points the signals read);
        ``None``: none. A site without its hook point is refused here, before any generation."""
        if plan is not None:
            hook_dict = self.bridge.hook_dict
            for sig, layer in plan.sites():
                name = HOOK_POINTS[sig].format(i=layer)
                if hook_dict.get(name) is None:
                    raise CaptureError(
                        f"transformer-lens: this bridge has no hook point {name!r} to intervene on: use backend='hf'"
                    )
        self._plan = plan

    def _edit_hooks(self, start: int) -> list[tuple[str, Any]]:
        """``(hook point name, hook)`` per site of the plan, for a forward whose first absolute
        position is ``start`` (the KV cache's length): the prefill and each decode step edit
        exactly the positions each record names."""
        plan = self._plan

        def make(sig: str, layer: int) -> Callable[[Any, Any], Any]:
            def hook(t: Any, hook: Any) -> Any:
                new = plan.edit(sig, layer, t, start)
                return None if new is t else new

            return hook

        return [(HOOK_POINTS[sig].format(i=layer), make(sig, layer)) for sig, layer in plan.sites()]

    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True) -> Step:
        if self._plan is None:
            return self._step(input_ids, cache, logits)
        # interventions first, through the bridge's context manager (removed on every exit path):
        # the capture's hooks on the same hook points, added after them, read the edited values
        edits = self._edit_hooks(0 if cache is None else int(cache.get_seq_length()))
        with self.bridge.hooks(fwd_hooks=edits):
            return self._step(input_ids, cache, logits)

    def _step(self, input_ids: Any, cache: Any, logits: bool) -> Step:
        import torch

        bufs: dict[str, list[Any]] = {s: [None] * self._n for s in self.signals}
        added: list[tuple[Any, Any]] = []

        def make(slot: list[Any], i: int):  # noqa: ANN202
            def hook(t: Any, hook: Any) -> None:
                slot[i] = t.detach()

            return hook

        try:
            for sig, pts in self._points.items():
                for i, hp in enumerate(pts):
                    added.append((hp, hp.add_hook(make(bufs[sig], i), dir="fwd")))
            for a in self._attn:
                added.append((None, a.register_forward_pre_hook(_alias_cache, with_kwargs=True)))
            kw: dict[str, Any] = {"use_cache": True}
            if cache is not None:
                kw[self._cache_kw] = cache
            with torch.inference_mode():
                lg, new_cache = self.bridge(input_ids.to(self.bridge.cfg.device), return_type="logits_and_cache", **kw)
        finally:
            for hp, handle in added:
                if hp is None:
                    handle.remove()
                else:
                    handle.hook.remove()
                    hp.fwd_hooks = [h for h in hp.fwd_hooks if h is not handle]
        if new_cache is None:
            raise CaptureError("transformer-lens: the bridge returned no KV cache")
        missing = [s for s, b in bufs.items() if any(t is None for t in b)]
        if missing:
            raise CaptureError(f"transformer-lens: the forward did not reach the hook points for {', '.join(missing)}")
        acts = {s: torch.stack([t[0] for t in b], dim=1) for s, b in bufs.items()}
        return Step(logits=lg[0].float() if logits else None, acts=acts, cache=new_cache)
