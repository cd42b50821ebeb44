"""Interventions on the ``hf`` backend: a forward hook per edited module that replaces its output with
the :class:`~llmri.interventions.Plan`'s edit, over the step's absolute positions (KV cache
consistent: a prefill and each decode step edit exactly the positions the record names)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..._errors import CaptureError
from .layout import Point, describe, pick, residual_arg


def replaced(out: Any, t: Any, new: Any) -> Any:
    """``out`` (a module's output holding ``t``, as :func:`~.layout.pick` found it) with ``new`` in
    ``t``'s place: a new tensor or tuple, or ``t`` written in place inside any other output object
    (a ModelOutput); ``None`` then, which tells torch to keep ``out``."""
    import torch

    if isinstance(out, torch.Tensor):
        return new.reshape(out.shape)
    if isinstance(out, tuple) and any(x is t for x in out):
        return tuple(new if x is t else x for x in out)
    t.copy_(new.reshape(t.shape))
    return None


def edit_hooks(
    plan: Any, points: dict[str, list[Point | None]], n: int, d: int, start: int
) -> list[tuple[Any, Callable[..., Any]]]:
    """``(module, hook)`` per site of ``plan`` for a forward over ``n`` positions from ``start``."""
    out = []
    for sig, layer in plan.sites():
        pt = points[sig][layer]
        assert pt is not None  # checked by check_sites
        out.append((pt.module, _hook(plan, sig, layer, pt, n, d, start)))
    return out


def _hook(plan: Any, sig: str, layer: int, pt: Point, n: int, d: int, start: int) -> Callable[..., Any]:
    def hook(mod: Any, args: Any, kwargs: Any, out: Any) -> Any:
        t = pick(out, n, d)
        if t is None:
            raise CaptureError(
                f"hf: {pt.path} ({type(mod).__name__}) returned {describe(out)}, not the [1, {n}, {d}] vector "
                f"an intervention on {sig!r} edits"
            )
        res = None if pt.residual is None else residual_arg(mod, pt.residual, args, kwargs).reshape(t.shape)
        own = t if res is None else t - res
        new = plan.edit(sig, layer, own, start)
        if new is own:
            return None
        return replaced(out, t, new if res is None else new + res)

    return hook


def check_sites(plan: Any, points: dict[str, list[Point | None]]) -> None:
    """One line for a site the model has no module for (a layer without an MLP, say)."""
    for sig, layer in plan.sites():
        pts = points.get(sig)
        if not pts or pts[layer] is None:
            raise CaptureError(f"hf: layer {layer} has no {sig!r} module to intervene on")
