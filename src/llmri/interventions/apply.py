"""Interventions applied: the checks that need the model (layer range, width), and each record as an
edit of one module's output ``[1, n, d_model]`` over the step's absolute positions.

A backend calls :meth:`Plan.edit` from a forward hook on the signal's module with the step's first
absolute position, so a prefill and each decode step (KV cache) edit exactly the positions the
record names; the backend owns the hooks (added and removed around each step)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._errors import CaptureError
from .records import Ablate, Intervention, Patch, Positions, Steer
from .vector import Vector


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
            if isinstance(r, Ablate) and r.mean is not None and r.mean.width != d_model:
                raise CaptureError(f"ablate: the stored means have width {r.mean.width}, the model's is {d_model}")
            if isinstance(r, Ablate) and r.neurons and r.neurons[-1] >= d_model:
                raise CaptureError(f"ablate: neuron {r.neurons[-1]} is out of range: d_model is {d_model}")
            if isinstance(r, Ablate) and r.is_noop:
                continue
            if isinstance(r, Patch) and r.values is None:
                continue  # a source prompt, run by resolve()
            self._add(r)
        #: ``{signal: float32 [layers, d_model]}``, the calibration means ``value="mean"`` reads
        self.means: dict[str, np.ndarray] = {}
        self._tensors: dict[tuple[int, int, str, Any, Any], Any] = {}

    def _add(self, r: Intervention) -> None:
        for k, layer in enumerate(r.layers):
            self.edits.setdefault((r.signal, layer), []).append(Edit(r, layer, k))

    def sources(self) -> list[str]:
        """The source prompts of patches still to run (:meth:`resolve`)."""
        return [r.source for r in self.records if isinstance(r, Patch) and r.values is None and r.source is not None]

    def resolve(self, run: Callable[[str], dict[str, np.ndarray]]) -> None:
        """Run each patch's source prompt (``run(text)``: ``{signal: float [n, layers, d_model]}`` of
        the unedited model) and patch with its values; one line for a position the source lacks."""
        done: dict[str, dict[str, np.ndarray]] = {}
        for r in self.records:
            if not isinstance(r, Patch) or r.values is not None or r.source is None:
                continue
            acts = done.get(r.source) or done.setdefault(r.source, run(r.source))
            if r.signal not in acts:
                raise CaptureError(f"patch: the capture does not record {r.signal!r}: add it to signals")
            a = np.asarray(acts[r.signal], dtype=np.float32)
            n_src = a.shape[0]
            at = tuple(range(min(n_src, self.n_prompt))) if isinstance(r.positions, str) else r.positions
            if at and max(at) >= min(n_src, self.n_prompt):
                raise CaptureError(
                    f"patch: position {max(at)} is past the source ({n_src} positions) or the prompt ({self.n_prompt})"
                )
            vals = a[list(at)][:, list(r.layers)].transpose(1, 0, 2).reshape(-1, a.shape[-1])
            self._add(replace(r, source=None, values=Vector.of(vals), at=at))

    @property
    def mean_signals(self) -> list[str]:
        """The signals whose calibration mean an ablation needs (``value="mean"``)."""
        return sorted(
            {r.signal for r in self.records if isinstance(r, Ablate) and r.value == "mean" and r.mean is None}
        )

    def recorded(self) -> list[Intervention]:
        """The records as a session stores them: a mean ablation with the calibration means it used."""
        out: list[Intervention] = []
        for r in self.records:
            if isinstance(r, Ablate) and r.value == "mean" and r.mean is None and r.signal in self.means:
                r = replace(r, mean=Vector.of(np.asarray(self.means[r.signal], np.float32)[list(r.layers)]))
            out.append(r)
        return out

    def sites(self) -> list[tuple[str, int]]:
        """``(signal, layer)`` of each module output the plan edits."""
        return list(self.edits)

    def touches(self, signal: str, layer: int, start: int, n: int) -> bool:
        """Whether an edit at ``(signal, layer)`` changes any of the absolute positions
        ``start .. start + n - 1`` (a backend that pays per edited site skips the others)."""
        for e in self.edits.get((signal, layer), ()):
            r = e.record
            if isinstance(r, Patch):
                if any(start <= p < start + n for p in r.at or ()):
                    return True
            elif selected(r.positions, start, n, self.n_prompt) is not None:
                return True
        return False

    def _tensor(self, edit: Edit, what: str, like: Any) -> Any:
        """A float32 vector of ``edit`` on ``like``'s device: the direction's row, its unit, the mean."""
        import torch

        key = (id(edit.record), edit.row, what, like.device, edit.layer)
        t = self._tensors.get(key)
        if t is None:
            r = edit.record
            if what == "mean" and isinstance(r, Ablate) and r.mean is not None:  # the record's own
                a = np.array(r.mean.row(edit.row), dtype=np.float32)
            elif what == "mean":
                mean = self.means.get(r.signal)
                if mean is None:
                    raise CaptureError(f"ablate value='mean' needs the calibration mean of {r.signal!r}")
                a = np.asarray(mean[edit.layer], dtype=np.float32)
            elif what == "values":
                assert isinstance(r, Patch) and r.values is not None
                n = len(r.at or ())
                a = np.array(r.values.array()[edit.row * n : (edit.row + 1) * n], dtype=np.float32)
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
            r = e.record
            if isinstance(r, Patch):
                out = self._patched(e, r, out, t, start)
                continue
            sel = selected(r.positions, start, int(t.shape[1]), self.n_prompt)
            if sel is None:
                continue
            if out is t:
                out = t.clone()
            h = out[0, sel]
            out[0, sel] = self._edited(e, h)
        return out

    def _patched(self, e: Edit, r: Patch, out: Any, t: Any, start: int) -> Any:
        """``out`` with the source's rows at the step's positions among ``r.at``."""
        at = r.at or ()
        hits = [(j, p - start) for j, p in enumerate(at) if start <= p < start + int(t.shape[1])]
        if not hits:
            return out
        if out is t:
            out = t.clone()
        vals = self._tensor(e, "values", t)
        for j, i in hits:
            out[0, i] = vals[j].to(t.dtype)
        return out

    def _edited(self, e: Edit, h: Any) -> Any:
        """The rows ``h`` ``[k, d_model]`` (the model's dtype) after edit ``e``."""
        r = e.record
        assert not isinstance(r, Patch)
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


def run_sources(plan: Plan, backend: Any, encode: Callable[[str], list[int]]) -> None:
    """Resolve ``plan``'s patch sources by one unedited forward each on ``backend`` (before
    :meth:`~llmri.backends.Backend.intervene`)."""
    if not plan.sources():
        return
    import torch

    def run(text: str) -> dict[str, np.ndarray]:
        with torch.no_grad():
            step = backend.step(torch.tensor([encode(text)]), None, logits=False)
        return {s: a.float().cpu().numpy() for s, a in step.acts.items()}

    plan.resolve(run)
