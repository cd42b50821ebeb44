"""The Capture interface: a model's forward step that also returns per-layer activations."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .._errors import CaptureError
from .._registry import Registry
from ..frame import SIGNALS

BACKENDS: Registry[type[Capture]] = Registry("backend")


@dataclass
class Step:
    """The result of one forward over ``n`` new positions.

    ``logits``: float32 Tensor ``[n, vocab]`` (or ``None`` when not requested); ``acts``:
    ``{signal: Tensor[n, layers, d_model]}`` in the model's dtype, owned by the caller (the
    backend keeps no reference after returning); ``cache``: the backend's KV cache to pass to the
    next step.
    """

    logits: Any
    acts: dict[str, Any]
    cache: Any


class Capture(ABC):
    """A capture backend bound to one model.

    ``step(input_ids, cache)`` runs the model on the new positions only (the KV cache holds the
    rest) and returns their logits and the requested signals for every layer. Backends must leave
    the model exactly as they found it after every step (no hooks left registered), also when the
    forward raises. ``close()`` frees what the backend holds; it is also a context manager.
    """

    name: ClassVar[str] = ""
    #: Signals this backend can capture, for any supported architecture.
    provides: ClassVar[tuple[str, ...]] = SIGNALS

    def __init__(self, model: Any, signals: Sequence[str] = SIGNALS) -> None:
        self.loaded = model
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

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_signals(signals: Sequence[str] | str, provides: Sequence[str], backend: str) -> list[str]:
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
