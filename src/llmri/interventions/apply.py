"""Interventions applied: the checks that need the model (layer range, width), and each record as an
edit of one module's output ``[1, n, d_model]`` over the step's absolute positions.

A backend calls :meth:`Plan.edit` from a forward hook on the signal's module with the step's first
absolute position, so a prefill and each decode step (KV cache) edit exactly the positions the
record names; the backend owns the hooks (added and removed around each step)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import CaptureError
from .records import Ablate, Intervention, Positions, Steer, Vector


@dataclass(frozen=True)
class Edit:
    """One record at one layer: ``row`` is the row of a per-layer vector (``0`` for one vector)."""

    record: Intervention
    layer: int
    row: int


def selected(positions: Positions, start: int, n: int, n_prompt: int) -> list[int] | slice | None:
    """The step-local indices of the absolute positions ``start .. start + n - 1`` that
    ``positions`` names (a slice for a run, ``None`` for none)."""
    end = start + n
    if not isinstance(positions, str):
        idx = [p - start for p in positions if start <= p < end]
        return idx or None
    if positions == "all":
        lo, hi = start, end
    elif positions == "prompt":
        lo, hi = start, min(end, n_prompt)
    elif positions == "generated":
        lo, hi = max(start, n_prompt), end
    else:  # "last"
        lo, hi = max(start, n_prompt - 1), min(end, n_prompt)
    return slice(lo - start, hi - start) if hi > lo else None


class Plan:
    """``records`` checked against a model of ``n_layers`` layers of width ``d_model``, for a prompt
    of ``n_prompt`` positions: one line (a :class:`~llmri.CaptureError`) for a layer out of range or
    a vector of another width, before any generation."""

    def __init__(
        self,
        records: Sequence[Intervention],
        *,
        n_layers: int,
        d_model: int,
        n_prompt: int,
        fingerprint: str | None = None,
    ) -> None:
        self.records = tuple(records)
        self.n_prompt = n_prompt
        self.d_model = d_model
        self.edits: dict[tuple[str, int], list[Edit]] = {}
        for r in self.records:
            bad = [x for x in r.layers if x >= n_layers]
            if bad:
                raise CaptureError(
                    f"{r.kind}: layer {bad[0]} is out of range: the model has {n_layers} layers (0-{n_layers - 1})"
                )
            if r.model is not None and fingerprint and r.model != fingerprint:
                raise CaptureError(
                    f"{r.kind}: the direction was made on another model (fingerprint {r.model}, this model's is "
                    f"{fingerprint}); Direction.unbound() drops the check"
                )
            vec = r.direction
            if vec is not None and vec.width != d_model:
                raise CaptureError(f"{r.kind}: the direction has width {vec.width}, the model's d_model is {d_model}")
            if isinstance(r, Ablate) and r.neurons and r.neurons[-1] >= d_model:
                raise CaptureError(f"ablate: neuron {r.neurons[-1]} is out of range: d_model is {d_model}")
            if isinstance(r, Ablate) and r.is_noop:
                continue
            for k, layer in enumerate(r.layers):
                self.edits.setdefault((r.signal, layer), []).append(Edit(r, layer, k))
        #: ``{signal: float32 [layers, d_model]}``, the calibration means ``value="mean"`` reads
        self.means: dict[str, np.ndarray] = {}
        self._tensors: dict[tuple[int, int, str, Any, Any], Any] = {}

    @property
    def mean_signals(self) -> list[str]:
        """The signals whose calibration mean an ablation needs (``value="mean"``)."""
        return sorted({r.signal for r in self.records if isinstance(r, Ablate) and r.value == "mean"})

    def sites(self) -> list[tuple[str, int]]:
        """``(signal, layer)`` of each module output the plan edits."""
        return list(self.edits)

    def _tensor(self, edit: Edit, what: str, like: Any) -> Any:
        """A float32 vector of ``edit`` on ``like``'s device: the direction's row, its unit, the mean."""
        import torch

        key = (id(edit.record), edit.row, what, like.device, edit.layer)
        t = self._tensors.get(key)
        if t is None:
            r = edit.record
            if what == "mean":
                mean = self.means.get(r.signal)
                if mean is None:
                    raise CaptureError(f"ablate value='mean' needs the calibration mean of {r.signal!r}")
                a = np.asarray(mean[edit.layer], dtype=np.float32)
            else:
                assert isinstance(r.direction, Vector)
                a = np.array(r.direction.row(edit.row), dtype=np.float32)
                if what == "unit":
                    a = a / np.float32(np.linalg.norm(a))
            t = self._tensors[key] = torch.from_numpy(a).to(like.device)
        return t

    def edit(self, signal: str, layer: int, t: Any, start: int) -> Any:
        """``t`` (``[1, n, d_model]``, the output of ``signal`` at ``layer`` for absolute positions
        ``start ..``) with this plan's edits there, as a new tensor (``t`` itself where none applies)."""
        out = t
        for e in self.edits.get((signal, layer), ()):
            sel = selected(e.record.positions, start, int(t.shape[1]), self.n_prompt)
            if sel is None:
                continue
            if out is t:
                out = t.clone()
            h = out[0, sel]
            out[0, sel] = self._edited(e, h)
        return out

    def _edited(self, e: Edit, h: Any) -> Any:
        """The rows ``h`` ``[k, d_model]`` (the model's dtype) after edit ``e``."""
        r = e.record
        if isinstance(r, Steer):
            if r.norm == "match":
                h32 = h.float()
                add = r.scale * h32.norm(dim=-1, keepdim=True) * self._tensor(e, "unit", h)
                return (h32 + add).to(h.dtype)
            return h + (r.scale * self._tensor(e, "row", h)).to(h.dtype)
        mean = self._tensor(e, "mean", h) if r.value == "mean" else None
        if r.direction is not None:
            u = self._tensor(e, "unit", h)
            h32 = h.float()
            target = 0.0 if mean is None else float(mean @ u) if isinstance(r.value, str) else float(r.value)
            return (h32 - (h32 @ u - target)[..., None] * u).to(h.dtype)
        new = h.clone()
        if r.neurons is None:
            if mean is None:
                new.fill_(float(r.value))
            else:
                new[:] = mean.to(h.dtype)
        else:
            idx = list(r.neurons)
            new[..., idx] = float(r.value) if mean is None else mean[idx].to(h.dtype)
        return new
