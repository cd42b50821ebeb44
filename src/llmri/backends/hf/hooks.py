"""Forward hooks and eval mode for the ``hf`` backend, at the cost of a step: 90 hooks and ~400
modules a forward on a small model, so each costs what it must and no more."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

_HOOK_IDS = itertools.count(1)


class _Hook:
    """A forward hook (called with kwargs) put straight into a module's hook dicts and taken out by
    :meth:`remove`: what ``register_forward_hook(hook, with_kwargs=True)`` and its handle do, without the
    handle's weak references (90 hooks added and removed per step: 0.2 ms through the API, 0.04 ms so).
    Keys are negative, apart from the API's positive ids; a module without those dicts gets the API."""

    __slots__ = ("module", "key", "handle")

    def __init__(self, module: Any, hook: Callable[..., Any]) -> None:
        self.module, self.key, self.handle = module, -next(_HOOK_IDS), None
        hooks, kw = getattr(module, "_forward_hooks", None), getattr(module, "_forward_hooks_with_kwargs", None)
        if isinstance(hooks, dict) and isinstance(kw, dict):
            hooks[self.key] = hook
            kw[self.key] = True
        else:
            self.handle = module.register_forward_hook(hook, with_kwargs=True)

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            return
        self.module._forward_hooks.pop(self.key, None)
        self.module._forward_hooks_with_kwargs.pop(self.key, None)


def add_hook(module: Any, hook: Callable[..., Any]) -> _Hook:
    """``hook(module, args, kwargs, output)`` on ``module``'s forward until ``.remove()``."""
    return _Hook(module, hook)


@contextmanager
def eval_mode(model: Any, modules: Sequence[Any] | None = None) -> Iterator[None]:
    """``model`` in eval mode inside the block (no dropout), its modules' training flags put back
    in ``finally``: a model the user wrapped in training mode is left in it. ``modules``: the
    model's modules, listed once by the caller (walking ~400 modules costs ~0.4 ms a step)."""
    training = [m for m in (model.modules() if modules is None else modules) if m.training]
    try:
        for m in training:
            m.training = False
        yield
    finally:
        for m in training:
            m.training = True


@contextmanager
def hooked(hooks: Iterable[tuple[Any, Callable[..., Any]]]) -> Iterator[None]:
    """Each ``(module, hook)`` on its module's forward inside the block, in the order given (a hook
    that returns a value replaces the output the next ones see), added inside ``try`` and removed in
    ``finally``: nothing is left on the model whichever way the block ends. The one way the ``hf``
    backend's hooks go on and come off (capture, readouts, interventions)."""
    handles: list[_Hook] = []
    try:
        for module, hook in hooks:
            handles.append(add_hook(module, hook))
        yield
    finally:
        for h in handles:
            h.remove()
