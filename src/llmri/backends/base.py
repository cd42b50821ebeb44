"""The Backend interface: a model's forward step that also returns per-layer activations."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .._deprecated import renamed
from .._errors import CaptureError
from .._registry import Registry
from ..frame import SIGNALS

BACKENDS: Registry[type[Backend]] = Registry("backend")


@dataclass
class Step:
    """The result of one forward over ``n`` new positions.

    ``logits``: float32 Tensor ``[n, vocab]`` (or ``None`` when not requested); ``acts``:
    ``{signal: Tensor[n, layers, d_model]}`` in the model's dtype, owned by the caller (the
    backend keeps no reference after returning); ``cache``: the backend's KV cache to pass to the
    next step.

    ``attn_weights`` (only from ``step(..., attention=True)`` on a backend whose
    ``supports_attention`` is true; ``None`` otherwise): one entry per layer, each a float32
    Tensor ``[heads, n, n_total]`` of the softmax attention weights of the ``n`` new positions
    (queries) over every position so far (keys ``0 .. n_total - 1``, ``n_total`` = cached + new),
    or ``None`` for a layer that has no attention (a state-space block of a hybrid model). A
    sliding-window layer's keys are the last ones: its weights are right-aligned, the positions
    before the window zero. Memory: ``4 * heads * n * n_total`` bytes per layer.

    ``stacked`` (optional): every signal in one Tensor ``[signals, n, layers, d_model]`` in
    ``acts`` order, where the backend recorded them into one buffer (``acts[s]`` are its views),
    so the frame work needs no stack of its own.
    """

    logits: Any
    acts: dict[str, Any]
    cache: Any
    attn_weights: list[Any] | None = None
    stacked: Any = None


@dataclass(frozen=True)
class LensHead:
    """The model's own path from a residual vector to next-token logits, for the logit lens.

    ``norm``: the final norm (the module the model applies after its last block; an identity
    for models without one); ``unembed``: the unembedding (the LM head); ``postprocess``: what
    the model's forward does to the LM head's output before returning it (logit scaling,
    Gemma-2's ``tanh`` soft-capping, a padded vocabulary cut back), ``None`` for nothing.
    Calling it on ``[..., d_model]`` (on the model's device, in its dtype) returns float32
    ``[..., vocab]`` (or, with ``keep_dtype``, the unembedding's dtype): applied to the last
    block's output it gives the model's own logits.
    """

    norm: Callable[[Any], Any]
    unembed: Callable[[Any], Any]
    postprocess: Callable[[Any], Any] | None = None
    #: return the unembedding's own dtype where there is no postprocessing (a :meth:`lowered` head:
    #: the lens's statistics convert a few rows at a time, which saves a pass over all the logits)
    keep_dtype: bool = False

    def __call__(self, resid: Any) -> Any:
        import torch

        with torch.inference_mode():
            logits = self.unembed(self.norm(resid))
            if self.postprocess is not None:
                logits = self.postprocess(logits)
            elif self.keep_dtype:
                return logits
            return logits.float()

    def lowered(self, dtype: Any) -> LensHead:
        """This head with the unembedding in ``dtype`` (a copy of its weights, made here once):
        ``bfloat16`` halves the bytes the lens reads per token and runs ~3x faster on a CPU with
        AVX-512 BF16, at ~1e-2 on probabilities (docs/benchmarks.md, "Readouts"). The norm stays as it is. Needs a
        linear unembedding (``weight`` and optional ``bias``)."""
        import torch

        weight = getattr(self.unembed, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.is_meta:
            raise CaptureError(f"lens_dtype needs a linear unembedding, not a {type(self.unembed).__name__}")
        bias = getattr(self.unembed, "bias", None)
        with torch.no_grad():
            w = weight.detach().to(dtype).clone()
            b = None if not isinstance(bias, torch.Tensor) else bias.detach().to(dtype).clone()

        def unembed(h: Any) -> Any:
            return torch.nn.functional.linear(h.to(w.dtype), w, b)

        return LensHead(norm=self.norm, unembed=unembed, postprocess=self.postprocess, keep_dtype=True)


class Backend(ABC):
    """A capture backend bound to one model.

    ``step(input_ids, cache)`` runs the model on the new positions only (the KV cache holds the
    rest) and returns their logits and the requested signals for every layer. Backends must leave
    the model exactly as they found it after every step (no hooks left registered), also when the
    forward raises. ``close()`` frees what the backend holds; it is also a context manager.

    Optional abilities: ``lens_head()`` (the final norm and unembedding, for the logit lens) and,
    where ``supports_attention`` is true, ``step(..., attention=True)``, which also fills
    ``Step.attn_weights``.
    """

    name: ClassVar[str] = ""
    #: Signals this backend can capture, for any supported architecture.
    provides: ClassVar[tuple[str, ...]] = SIGNALS
    #: Whether ``step`` accepts ``attention=True`` (and then returns ``Step.attn_weights``).
    supports_attention: ClassVar[bool] = False
    #: Whether the constructor accepts ``hook_points=`` (the user names the module per signal).
    supports_hook_points: ClassVar[bool] = False
    #: Whether :meth:`intervene` applies interventions (steering, ablation) inside its steps.
    supports_interventions: ClassVar[bool] = False
    #: Whether this backend runs model files of its own rather than a transformers model: then
    #: :func:`llmri.load_model` (``backend=`` its name) hands the spec to :meth:`load_model`.
    loads_own_files: ClassVar[bool] = False

    @classmethod
    def load_model(cls, spec: Any) -> Any:
        """The model object this backend records, loaded from ``spec`` (only where
        :attr:`loads_own_files`: llama.cpp reads a GGUF file itself)."""
        raise CaptureError(f"backend {cls.name!r} records a transformers model: load it with llmri.load_model(spec)")

    def __init__(self, model: Any, signals: Sequence[str] | str | None = None) -> None:
        self.loaded = model
        #: Whether the caller named the signals (``None``: every signal the model has).
        self.signals_requested = signals is not None
        self.signals = check_signals(signals, self.provides, self.name)

    @property
    @abstractmethod
    def layer_names(self) -> list[str]: ...

    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    @property
    @abstractmethod
    def d_model(self) -> int: ...

    @abstractmethod
    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True) -> Step: ...

    def lens_head(self) -> LensHead:
        """The model's final norm and unembedding, applied the way its forward applies them.

        The residual the lens reads is ``resid`` (each block's output): ``lens_head()(resid)`` at
        the last layer equals the model's logits. Backends that cannot find these modules (or
        have no access to weights) keep this default, which raises :class:`CaptureError`.
        """
        raise CaptureError(
            f"backend {self.name!r} cannot find the model's final norm / unembedding: lens=True is not available"
        )

    @property
    def signal_modules(self) -> dict[str, list[str | None]]:
        """What each signal records, per layer: ``{signal: [module or hook point per layer]}``;
        ``None`` where a layer has no such module (its values are zeros). Empty where the
        backend does not say (session meta ``signal_modules``)."""
        return {}

    @property
    def frame_thread(self) -> bool:
        """Whether a CPU capture on this backend builds each step's frame on a thread while the next
        step runs (``LLMRI_FRAME_THREAD`` decides where it is set). Off by default: where the forward
        takes every core and holds the GIL, the thread only takes them from it (docs/benchmarks.md)."""
        return False

    def torch_module(self) -> Any:
        """The torch module tree this backend runs (where its hooks go, and where a leftover hook
        would be), or ``None`` for an engine that runs no torch module."""
        return None

    def blocks(self) -> list[Any]:
        """The module of each decoder block in :attr:`layer_names` order (``[]`` where
        :meth:`torch_module` is ``None``): what a test or an intervention hooks per layer."""
        return []

    def intervene(self, plan: Any) -> None:
        """Apply ``plan`` (a :class:`~llmri.interventions.Plan`) to every later step (``None``:
        none); the backend adds its edits inside each step and removes them on every exit path."""
        if plan is not None:
            raise CaptureError(
                f"backend {self.name!r} cannot apply interventions: use backend='hf' (or 'transformer-lens', 'nnsight')"
            )

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_signals(signals: Sequence[str] | str | None, provides: Sequence[str], backend: str) -> list[str]:
    """The signals asked for, checked, in ``SIGNALS`` order; ``None``: all the backend provides."""
    if signals is None:
        return [s for s in SIGNALS if s in provides]
    if isinstance(signals, str):
        signals = [s.strip() for s in signals.split(",") if s.strip()]
    out: list[str] = []
    for s in signals:
        if s not in SIGNALS:
            raise CaptureError(f"unknown signal {s!r} (choose from {', '.join(SIGNALS)})")
        if s not in provides:
            raise CaptureError(f"backend {backend!r} cannot capture signal {s!r}")
        if s not in out:
            out.append(s)
    if not out:
        raise CaptureError("no signals requested (choose from resid, attn, mlp)")
    return [s for s in SIGNALS if s in out]


__getattr__ = renamed(__name__, {"Capture": "llmri.backends.base:Backend"})
