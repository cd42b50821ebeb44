"""``nnsight``: nnsight 0.8 traces (``TransformersModel``), locally or on NDIF (``remote``)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from .._errors import CaptureError, require
from ..frame import SIGNALS
from ..models.identity import module_fingerprint
from .base import BACKENDS, Backend, LensHead, Step
from .hf import find_lens_head
from .hf.edits import replaced
from .hf.layout import find_layers, find_layout, pick, text_config
from .wrapped import WrappedModel, cached_for, hidden_size, weight_sharing_copy

EXTRA = "nnsight"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CACHE_KEY = "_llmri_nnsight_model"


def _nnsight() -> Any:
    return require("nnsight", EXTRA)


def is_nnsight(obj: Any) -> bool:
    """Whether ``obj`` is an nnsight model (without importing nnsight when it isn't)."""
    if "nnsight" not in sys.modules:
        return False
    try:
        return isinstance(obj, _nnsight().Envoy) and getattr(obj, "_module", None) is not None
    except ImportError:
        return False


def _module(nn_model: Any) -> Any:
    return nn_model._module


def wrap(nn_model: Any, *, remote: bool | str = False) -> WrappedModel:
    """The model object llmri captures from, around an nnsight model the user already built.

    ``remote``: passed to every ``trace`` (``True`` runs on NDIF, a host string on that host,
    ``"local"`` runs nnsight's local simulation of the remote path); see docs/backends.md.
    """
    hf = _module(nn_model)
    tok = getattr(nn_model, "tokenizer", None)
    if tok is None:
        raise CaptureError(
            "nnsight: this model has no tokenizer: wrap it as TransformersModel(model, tokenizer=tokenizer)"
        )
    config = getattr(hf, "config", None)
    if config is None:
        raise CaptureError(f"nnsight: {type(hf).__name__} has no transformers config")
    _, layers = find_layers(hf)
    repo = getattr(nn_model, "repo_id", None)
    name = str(repo if isinstance(repo, str) else (getattr(config, "_name_or_path", "") or type(hf).__name__))
    local = os.path.isdir(name)
    return WrappedModel(
        wrapper=nn_model,
        model=hf,
        tokenizer=tok,
        name=os.path.basename(name.rstrip("/\\")) if local else name,
        path=name if local else "",
        llmri_backend="nnsight",
        n_layers=len(layers),
        d_model=hidden_size(config),
        fingerprint=module_fingerprint(hf),
        options={"remote": remote},
    )


def wrap_loaded(loaded: Any) -> Any:
    """An nnsight ``TransformersModel`` around a LoadedModel's transformers model, without copying
    its weights.

    nnsight installs its own ``forward`` on every module it wraps (for good), so it wraps a
    :func:`weight_sharing_copy` (new module objects, the same parameter and buffer tensors): the
    user's model stays exactly as it was and no weight exists twice.
    """
    _nnsight()
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(weight_sharing_copy(loaded.model), tokenizer=loaded.tokenizer, task="text-generation")


def _envoy(nn_model: Any, path: str) -> Any:
    """The nnsight envoy of the module at ``path`` (``model.layers.3.mlp``)."""
    envoy = nn_model
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


@BACKENDS.register("nnsight")
class NNsightBackend(Backend):
    """One nnsight trace per step, recording (``tracer.cache``) each decoder layer's output
    (``resid``), its attention output (``attn``) and its MLP output (``mlp``).

    ``model``: a :class:`~llmri.models.LoadedModel` (wrapped once, around a weight-sharing copy,
    and kept while its transformers model lives) or
    the wrapped model of ``llmri.capture(nnsight_model, ...)``. ``remote`` (or the wrapped
    model's ``remote`` option) is passed to ``trace``: then the KV cache travels to the server
    and back with every step. A trace leaves nothing on the model when it ends, also when it
    raises. Activations come back detached in the model's dtype as ``[n, layers, d_model]``.
    """

    name = "nnsight"
    provides = SIGNALS
    supports_hook_points = True
    supports_interventions = True

    def __init__(
        self,
        model: Any,
        signals: Sequence[str] | str | None = None,
        *,
        remote: bool | str | None = None,
        hook_points: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, signals)
        if isinstance(model, WrappedModel):
            if model.llmri_backend != self.name:
                raise CaptureError(f"nnsight cannot record a model wrapped for {model.llmri_backend!r}")
            self.nn_model = model.wrapper
            self.remote = model.options.get("remote", False) if remote is None else remote
        else:
            _nnsight()
            if getattr(model, "model", None) is None:
                raise CaptureError("nnsight needs a transformers model (a LoadedModel or an nnsight model)")
            self.nn_model = cached_for(model.model, _CACHE_KEY, lambda: wrap_loaded(model))
            self.remote = remote or False
        if self.remote and self.remote != "local":
            repo = getattr(self.nn_model, "repo_id", None)
            if not isinstance(repo, str) or os.path.exists(repo) or not _HUB_ID.match(repo):
                raise CaptureError(
                    "nnsight remote execution (NDIF) runs models named by their Hugging Face hub id: build "
                    f"the model as TransformersModel('org/name') (this one is {repo!r}); see docs/backends.md"
                )
        import torch

        hf = _module(self.nn_model)
        self._d_model = hidden_size(text_config(hf.config))
        first = next(iter(hf.parameters()), None)
        self._dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
        self._copy_dtype = torch.float64 if self._dtype == torch.float32 else torch.float32
        self.layout = find_layout(
            hf, self.signals, self._d_model, requested=self.signals_requested, hook_points=hook_points
        )
        self.signals = [s for s in self.signals if s in self.layout.points]
        # Execution order inside a block (attention, then MLP, then the block's output), which is
        # the order nnsight needs should the values ever be read one by one in the trace.
        self._order = [s for s in ("attn", "mlp", "resid") if s in self.signals]
        self._paths: dict[str, list[str | None]] = {}
        self._flat: list[Any] = []
        for sig in self._order:
            row: list[str | None] = []
            for pt in self.layout.points[sig]:
                if pt is not None and pt.residual is not None:
                    raise CaptureError(
                        f"nnsight: {pt.path} returns its output plus its residual argument: name its inner "
                        "projection with hook_points, or use the hf backend"
                    )
                envoy = _envoy(self.nn_model, pt.path) if pt is not None else None
                if envoy is not None:
                    self._flat.append(envoy)
                row.append(envoy.path if envoy is not None else None)
            self._paths[sig] = row
        self._layers_path = self.layout.layers_path
        self._blocks = list(self.layout.blocks)
        self._names = [p.path if p else "" for p in self.layout.points.get("resid") or []] or [
            f"{self._layers_path}.{i}" for i in range(len(self._blocks))
        ]
        import inspect

        params = inspect.signature(type(hf).forward).parameters
        self._cache_kw = next((k for k in ("cache", "past_key_values", "cache_params") if k in params), "cache")
        self._hook_points = hook_points
        self._plan: Any = None  # the interventions (intervene())
        self._edits: list[tuple[str, int, Any]] = []  # (signal, layer, envoy) in execution order

    def intervene(self, plan: Any) -> None:
        """Apply ``plan`` (a :class:`~llmri.interventions.Plan`) in every later step by editing the
        modules' ``.output`` inside the step's trace (nnsight's own intervention API); ``None``:
        none. Refused here, before any generation, on a remote model (the plan's code runs here)
        and at a site the layout has no plain module for."""
        if plan is None:
            self._plan, self._edits = None, []
            return
        if self.remote:
            raise CaptureError("nnsight: interventions run on a local model only: use remote=False or backend='hf'")
        points = dict(self.layout.points)
        missing = sorted({s for s, _ in plan.sites()} - set(points))
        if missing:
            hf = _module(self.nn_model)
            points.update(find_layout(hf, missing, self._d_model, requested=True, hook_points=self._hook_points).points)
        edits = []
        for sig, layer in plan.sites():
            pt = points[sig][layer]
            if pt is None or pt.residual is not None:
                why = "no module" if pt is None else f"only {pt.path}, which returns its output plus its residual"
                raise CaptureError(f"nnsight: layer {layer} has {why} for {sig!r} to intervene on: use backend='hf'")
            edits.append((sig, layer, _envoy(self.nn_model, pt.path)))
        # nnsight hands a trace the modules' outputs in the order the forward runs them
        edits.sort(key=lambda e: (e[1], ("attn", "mlp", "resid").index(e[0])))
        self._plan, self._edits = plan, edits

    @property
    def layer_names(self) -> list[str]:
        return self._names

    @property
    def signal_modules(self) -> dict[str, list[str | None]]:
        return self.layout.paths()

    def torch_module(self) -> Any:
        return _module(self.nn_model)

    def blocks(self) -> list[Any]:
        return list(self._blocks)

    @property
    def d_model(self) -> int:
        return self._d_model

    def lens_head(self) -> LensHead:
        """The same modules as the ``hf`` backend's, on the transformers model nnsight wraps (called
        outside a trace, they run as plain modules). A remote model has no weights here."""
        hf = _module(self.nn_model)
        if self.remote and self.remote != "local":
            raise CaptureError(
                "nnsight: the model runs remotely and its weights are not here: lens=True is not available"
            )
        return find_lens_head(hf, self._layers_path)

    def _trace_kwargs(self, input_ids: Any, cache: Any) -> dict[str, Any]:
        import torch

        try:
            past: int | None = int(cache.get_seq_length()) if cache is not None else 0
        except ValueError:  # a cache of state-space layers only (Mamba) has no length, and needs no mask
            past = None
        kw: dict[str, Any] = {self._cache_kw: cache, "use_cache": True}
        if past is not None:
            # A mask over the cached positions too: nnsight would otherwise build one over the new
            # positions only, which transformers reads as a shorter sequence on some architectures.
            n = past + input_ids.shape[1]
            kw["attention_mask"] = torch.ones((1, n), dtype=torch.long, device=input_ids.device)
        if self.remote:
            kw["remote"] = self.remote
        return kw

    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True) -> Step:
        import torch

        nn_model = self.nn_model
        ids = input_ids.to(_module(nn_model).device) if not self.remote else input_ids
        kw = self._trace_kwargs(ids, cache)
        save = _nnsight().save
        n, d = int(input_ids.shape[-1]), self._d_model
        plan = self._plan
        start = 0 if cache is None or plan is None else int(cache.get_seq_length())
        edits = [e for e in self._edits if plan.touches(e[0], e[1], start, n)]
        with torch.inference_mode():
            with nn_model.trace(ids, **kw) as tracer:
                # tracer.cache records the modules as the forward passes them, without a hand-off to
                # the trace's worker per value (measured: 8% faster per step than .output.save()).
                # Cast to a wider dtype, so each value is a copy taken as the module returns it: the
                # forward may write into an output afterwards (Falcon adds attention into the MLP's).
                recorded = tracer.cache(modules=self._flat, device=None, dtype=self._copy_dtype)
                for sig, layer, envoy in edits:  # the interventions: each output edited as it comes
                    got = envoy.output
                    t = pick(got, n, d)
                    if t is None:
                        raise CaptureError(f"nnsight: {envoy.path} returned no [1, {n}, {d}] vector to edit ({sig!r})")
                    new = plan.edit(sig, layer, t, start)
                    if new is not t:
                        whole = replaced(got, t, new)
                        if whole is not None:
                            envoy.output = whole
                out = save(nn_model.output)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        if new_cache is None:
            raise CaptureError("nnsight: the model returned no KV cache")
        acts = {}
        for sig in self.signals:
            outs: list[Any] = []
            for p in self._paths[sig]:
                if p is None:
                    outs.append(None)
                    continue
                try:
                    got = recorded[p].output
                except (KeyError, AttributeError, TypeError) as exc:
                    raise CaptureError(f"nnsight: the trace did not record {sig!r} ({exc})") from exc
                t = pick(got, n, d)
                if t is None:
                    raise CaptureError(f"nnsight: {p} returned no [1, {n}, {d}] vector for the {sig!r} signal")
                outs.append(t[0].detach().to(self._dtype))
            ref = next(t for t in outs if t is not None)
            acts[sig] = torch.stack([torch.zeros_like(ref) if t is None else t for t in outs], dim=1)
        lg = out.logits[0].float() if logits else None
        return Step(logits=lg, acts=acts, cache=new_cache)
