"""The model names a server answers to (``GET /v1/models``), each bound to the engine that generates.

One name per loaded model, plus its steered variants (:func:`steered`: ``smollm2+honest``, the same
engine with interventions): a variant is one more :class:`ServedModel` whose ``options`` go over the
engine's; the worker and the routes only ever look a name up here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import CaptureError
from .errors import APIError


@dataclass
class ServedModel:
    """One name clients may send as ``model``.

    ``engine``: a :class:`~llmri.viewer.live.ModelEngine` (the loaded model, its backend and its
    capture options: lens, attention, frame dtype, SAEs); ``options``: capture options this name adds
    over the engine's (a steered variant's ``interventions``); ``parent``: the name a variant steers;
    ``meta``: what each session of this name adds to its ``meta["serve"]`` (a variant's ``variant``).
    """

    name: str
    engine: Any
    options: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))

    def card(self) -> dict[str, Any]:
        """The ``/v1/models`` entry (a variant also names its ``parent``, as vLLM's adapters do)."""
        card = {"id": self.name, "object": "model", "created": self.created, "owned_by": "llmri"}
        return card if self.parent is None else {**card, "root": self.parent, "parent": self.parent}


def steered(base: ServedModel, name: str, interventions: Sequence[Any], spec: str = "") -> ServedModel:
    """``base`` with ``interventions`` (``llmri.steer`` / ``llmri.ablate`` records) in every request,
    published as ``BASE+NAME``; checked against the model now (the backend, layer range, width,
    fingerprint), one line (a :class:`~llmri.CaptureError`) before the server starts. ``spec``: the
    text it was given as (``--variant``), kept in each session's ``meta["serve"]["variant"]``."""
    from ..capture.resolve import backend_for
    from ..interventions import Plan

    engine = base.engine
    records = (*engine.options.interventions, *interventions)  # over the engine's own, if it has any
    backend, cls = backend_for(engine.model, engine.backend)
    if not getattr(cls, "supports_interventions", False):
        raise CaptureError(f"variant {name!r}: the {backend} backend applies no interventions (use --backend hf)")
    describe = getattr(engine.model, "describe", None)
    info = describe() if callable(describe) else {}
    n_layers, d_model = info.get("n_layers"), info.get("d_model")
    if isinstance(n_layers, int) and isinstance(d_model, int):
        fingerprint = str(getattr(engine.model, "fingerprint", "") or "") or None
        try:
            Plan(records, n_layers=n_layers, d_model=d_model, n_prompt=1, fingerprint=fingerprint)
        except CaptureError as exc:
            raise CaptureError(f"variant {name!r}: {exc}") from None
    record = {"name": name, "base": base.name, "spec": spec}
    return ServedModel(f"{base.name}+{name}", engine, {"interventions": records}, base.name, {"variant": record})


class ModelRegistry:
    """Names -> :class:`ServedModel`; refuses a duplicate. ``aliases`` also answer (not listed)."""

    def __init__(self) -> None:
        self._models: dict[str, ServedModel] = {}
        self._aliases: dict[str, str] = {}

    def add(self, model: ServedModel, aliases: tuple[str, ...] = ()) -> ServedModel:
        for name in (model.name, *aliases):
            if name in self._models or name in self._aliases:
                raise ValueError(f"model name {name!r} is already served")
        self._models[model.name] = model
        for a in aliases:
            self._aliases[a] = model.name
        return model

    def get(self, name: str) -> ServedModel:
        """The model called ``name`` (or an alias of it); 404 ``model_not_found`` in OpenAI's shape."""
        hit = self._models.get(self._aliases.get(name, name))
        if hit is None:
            known = ", ".join(sorted(self._models))
            raise APIError(
                f"The model {name[:100]!r} does not exist (this server serves: {known})", 404,
                param="model", code="model_not_found",
            )  # fmt: skip
        return hit

    def cards(self) -> list[dict[str, Any]]:
        return [m.card() for m in self._models.values()]

    def engines(self) -> list[Any]:
        return list({id(m.engine): m.engine for m in self._models.values()}.values())
