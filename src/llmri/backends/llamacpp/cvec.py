"""Steering on ``resid`` through llama.cpp's own control vectors (``llama_apply_adapter_cvec``).

llama.cpp adds ``tensors[N]`` to the output of block ``N`` (counting from 0) right after its
residual add, before the ``l_out-N`` the eval callback copies, so the frames show the steered
residual as the ``hf`` backend's do. Its buffer starts at block 1 (block 0's output is never
steered), holds one vector per block and is added at every position of a decode: a record whose
positions split a step, and anything but an unnormalised ``steer`` of ``resid`` at blocks >= 1,
is refused before generation, naming the ``hf`` backend, which does them all."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._errors import CaptureError
from ...interventions import Steer, selected
from .recorder import Recorder, _name_at

#: Position sets a decode step is wholly inside or outside of (the prefill is all prompt, each
#: decode step one generated position); "last" and indices split the prefill.
WHOLE_STEPS = ("all", "prompt", "generated")


def check(plan: Any) -> None:
    """One line for a record llama.cpp's control vector cannot apply."""
    for r in plan.records:
        if not isinstance(r, Steer) or r.signal != "resid":
            what = r.kind if not isinstance(r, Steer) else f"steer on {r.signal!r}"
            raise CaptureError(
                f"llama.cpp cannot apply {what}: its control vectors add to resid only; use backend='hf'"
            )
        if r.norm is not None:
            raise CaptureError("llama.cpp cannot apply steer with norm='match' (a fixed vector only); use backend='hf'")
        if not isinstance(r.positions, str) or r.positions not in WHOLE_STEPS:
            raise CaptureError(
                f"llama.cpp steers whole steps (positions 'all', 'prompt' or 'generated'), not {r.positions!r}; "
                "use backend='hf'"
            )
        if 0 in r.layers:
            raise CaptureError(
                "llama.cpp never steers layer 0 (its control vectors start at block 1); use backend='hf'"
            )


def buffer(plan: Any, start: int, n: int, n_layers: int, d_model: int) -> np.ndarray | None:
    """float32 ``[(n_layers - 1) * d_model]``, block ``N``'s vector at row ``N - 1``: the sum of the
    records steering the positions ``start .. start + n - 1`` (``None`` where none does)."""
    out: np.ndarray | None = None
    for r in plan.records:
        sel = selected(r.positions, start, n, plan.n_prompt)
        if sel is None:
            continue
        if not (isinstance(sel, slice) and sel.start == 0 and sel.stop == n):
            raise CaptureError(f"llama.cpp: positions {r.positions!r} cover part of a step of {n} positions")
        if out is None:
            out = np.zeros((n_layers - 1, d_model), dtype=np.float32)
        for k, layer in enumerate(r.layers):
            out[layer - 1] += np.float32(r.scale) * r.direction.row(k)
    return None if out is None else out.reshape(-1)


class SteeredRecorder(Recorder):
    """A :class:`Recorder` for a step with a control vector. Builders name the residual sum
    ``ffn_out-N`` too and then, without a control vector, rename that very tensor ``l_out-N``; with
    one, ``l_out-N`` is the sum plus the vector, a new tensor, so the sum keeps the name ``ffn_out-N``
    and the name appears twice. The first is the feed-forward output (what ``mlp`` records), so a
    repeat is skipped. A subclass, so the compiled callback hands these steps to Python (it refuses
    repeats); steered steps run at the Python callback's speed."""

    def computed(self, t: int) -> bool:
        if self.error is None and _name_at(t + self.name_offset).value in self.seen:
            return True
        return super().computed(t)
