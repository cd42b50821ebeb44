"""Direction probes in a capture (``probes=[...]``; docs/interventions.md, "Watching a direction:
probes"): the directions read and checked against the model before generation, their record in the
session meta, and each step's rows (:func:`llmri.readouts.probes.probe_readout`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._errors import CaptureError
from .._jsonsafe import json_safe
from ..frame import ProbeRow
from ..interventions.direction import Direction
from ..readouts.probes import ProbeItem, every_layer, probe_label, probe_readout, read_probe, unit_rows
from .decode import Positions

_NAME = re.compile(r"^[\w.-]+$")


def read_probes(items: Sequence[ProbeItem]) -> list[tuple[str, Direction | np.ndarray]]:
    """``[(name, direction or .npy array)]``: each path read (before the model loads: a bad file is
    one line at once); the names distinct and fit for a store path (``probes/{name}/...``)."""
    out: list[tuple[str, Direction | np.ndarray]] = []
    for i, item in enumerate(items):
        name = probe_label(item, i)
        if not _NAME.match(name) or name in (".", ".."):
            raise CaptureError(
                f"probe {name!r:.80}: a name of letters, digits, '_', '-' and '.' only (Direction.named)"
            )
        if any(name == n for n, _ in out):
            raise CaptureError(
                f"two probes named {name}: give one another name (Direction.named, or probes={{name: d}})"
            )
        out.append((name, read_probe(item)))
    return out


def probes_from_meta(meta: dict[str, Any]) -> list[Direction]:
    """The directions a session's probes were made of (``meta["probes"]``, vectors included), each named
    as the session names it: ``probes=`` of a run that watches them again (:func:`llmri.rerun`)."""
    from ..interventions.vector import Vector

    out = []
    for r in meta.get("probes") or []:
        if isinstance(r, dict) and isinstance(r.get("vectors"), dict):
            prov = {**(r.get("provenance") or {}), "name": r.get("name")}
            if r.get("signal", "resid") != prov.get("signal", "resid"):
                prov["signal"] = r.get("signal")
            out.append(Direction(Vector.from_dict(r["vectors"]), tuple(r.get("layers") or ()), r.get("model"), prov))
    return out


class ProbeStep:
    """The probes of one capture: checked against the model when built, then one readout per step.

    ``probes``: :func:`read_probes`'s pairs. Each direction must have been made on this model (its
    fingerprint, where it has one, is ``fingerprint``), be ``d_model`` wide, name layers the model
    has (``n_layers``), read a recorded signal, and have a vector at one recorded layer at least
    (``recorded``: the model's layer at each of the session's layers). One line otherwise.
    """

    def __init__(
        self,
        probes: Sequence[tuple[str, Direction | np.ndarray]],
        *,
        d_model: int,
        n_layers: int,
        recorded: Sequence[int],
        signals: Sequence[str],
        fingerprint: str | None,
    ) -> None:
        self.n_layers = len(recorded)
        self.probes: list[tuple[str, Direction, list[int], np.ndarray]] = []
        self._units: dict[tuple[str, Any], Any] = {}
        where = {m: i for i, m in enumerate(recorded)}
        for name, d in probes:
            at = f"probe {name}"
            if isinstance(d, np.ndarray):
                d = every_layer(d, n_layers, at)
            if d.model is not None and fingerprint and d.model != fingerprint:
                raise CaptureError(
                    f"{at}: the direction was made on another model (fingerprint {d.model}, this model's is "
                    f"{fingerprint}); Direction.unbound() drops the check"
                )
            if d.d_model != d_model:
                raise CaptureError(f"{at}: the direction has width {d.d_model}, the model's d_model is {d_model}")
            if max(d.layers) >= n_layers:
                raise CaptureError(
                    f"{at}: layer {max(d.layers)} is out of range: the model has {n_layers} layers (0-{n_layers - 1})"
                )
            if d.signal not in signals:
                raise CaptureError(
                    f"{at}: reads {d.signal}, which this capture does not record (signals={list(signals)})"
                )
            kept = [k for k, layer in enumerate(d.layers) if layer in where]
            if not kept:
                raise CaptureError(f"{at}: none of its layers ({', '.join(map(str, d.layers))}) is recorded (layers=)")
            units = unit_rows(d, at)[kept]
            self.probes.append((name, d, [where[d.layers[k]] for k in kept], units))

    def meta(self) -> dict[str, Any]:
        """``{"probes": [record, ...]}`` (docs/FORMAT.md, "Probes"), ``{}`` without probes."""
        if not self.probes:
            return {}
        records = []
        for name, d, _, _ in self.probes:
            records.append(
                {
                    "name": name,
                    "signal": d.signal,
                    "layers": list(d.layers),
                    "d_model": d.d_model,
                    "model": d.model,
                    "norms": [float(x) for x in np.linalg.norm(d.array().astype(np.float64), axis=-1)],
                    "sha256": d.vectors.sha256(),
                    "provenance": json_safe(dict(d.provenance)),
                    "vectors": d.vectors.to_dict(),
                }
            )
        return {"probes": records}

    def _on(self, name: str, units: np.ndarray, device: Any) -> Any:
        key = (name, device)
        if key not in self._units:
            import torch

            self._units[key] = torch.from_numpy(units).to(device)
        return self._units[key]

    def rows(self, pos: Positions) -> list[dict[str, ProbeRow] | None]:
        """Each position's ``{probe name: ProbeRow}`` (``None`` without probes), from the step's full vectors."""
        n = len(pos.ids)
        if not self.probes:
            return [None] * n
        out: list[dict[str, ProbeRow]] = [{} for _ in range(n)]
        for name, d, cols, units in self.probes:
            acts = pos.acts[d.signal]
            cos, proj = probe_readout(acts, self._on(name, units, acts.device), cols, self.n_layers)
            for j in range(n):
                out[j][name] = ProbeRow(cos[j], proj[j])
        return list(out)
