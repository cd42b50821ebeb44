"""The model names a server answers to (``GET /v1/models``), each bound to the engine that generates.

One name per loaded model today. The registry is where later variants slot in: a steered model
published as its own name (``smollm2+honest@4``: the same engine with interventions, issue 20) or a
model with SAE features recorded is one more :class:`ServedModel` whose ``options`` go over the
engine's; the worker and the routes only ever look a name up here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .errors import APIError


@dataclass
class ServedModel:
    """One name clients may send as ``model``.

    ``engine``: a :class:`~llmri.viewer.live.ModelEngine` (the loaded model, its backend and its
    capture options: lens, attention, frame dtype); ``options``: capture options this name adds over
    the engine's (empty today; a steered variant's ``interventions``).
    """

    name: str
    engine: Any
    options: dict[str, Any] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))

    def card(self) -> dict[str, Any]:
        """The ``/v1/models`` entry."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "llmri"}


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
