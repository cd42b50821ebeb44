"""Direction probes: how far each token's full vector points along a saved direction, at every layer
the direction has (docs/interventions.md, "Watching a direction: probes").

:func:`check_probes` is the settings' cheap check (no file read); :func:`read_probe` reads a path
(``.gguf`` / ``.safetensors`` through :func:`llmri.load_direction`, or a ``.npy`` vector); and
:func:`probe_readout` computes one step's rows from the signal's full vectors, before any reduction.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import CaptureError
from ..interventions.direction import Direction, load_direction
from ..interventions.vector import Vector

#: What ``probes=`` holds once checked: directions, and paths read when a capture opens.
ProbeItem = Direction | str


def check_probes(probes: Any) -> tuple[ProbeItem, ...]:
    """``probes`` as a tuple of :class:`~llmri.Direction` objects and paths: one direction or path, a
    list of them, or ``{name: Direction}`` (each named so); anything else is one line."""
    if probes is None:
        return ()
    if isinstance(probes, Mapping):
        out: list[ProbeItem] = []
        for name, d in probes.items():
            if not isinstance(d, Direction):
                raise CaptureError(
                    f"probes: {name!s:.40} is a {type(d).__name__}, not a Direction (llmri.load_direction)"
                )
            out.append(d.named(str(name)))
        return tuple(out)
    if isinstance(probes, (Direction, str, os.PathLike)):
        probes = (probes,)
    if not isinstance(probes, (list, tuple)):
        raise CaptureError(
            f"probes must be a list of directions (llmri.Direction) or paths, got {type(probes).__name__}"
        )
    items: list[ProbeItem] = []
    for x in probes:
        if isinstance(x, os.PathLike):
            x = os.fspath(x)
        if not isinstance(x, (Direction, str)):
            raise CaptureError(f"probes: {type(x).__name__} is not a direction (llmri.Direction) or a path")
        items.append(x)
    return tuple(items)


def probe_label(item: ProbeItem, index: int) -> str:
    """A probe's name: its direction's (:meth:`Direction.named`), a path's file stem, else ``probe<index>``."""
    if isinstance(item, str):
        return Path(item).stem
    return item.name or f"probe{index}"


def read_probe(item: ProbeItem) -> Direction | np.ndarray:
    """A path read: a saved direction (``.gguf``, ``.safetensors``), or a ``.npy`` array (``[d_model]``
    or ``[layers, d_model]``, for every layer); a Direction as it is. One line for anything else."""
    if isinstance(item, Direction):
        return item
    suffix = Path(item).suffix.lower()
    if suffix in (".gguf", ".safetensors"):
        return load_direction(item)
    if suffix != ".npy":
        raise CaptureError(
            f"probe {item}: a direction is a .gguf, .safetensors or .npy file, not {suffix or 'no suffix'!r}"
        )
    try:
        a = np.load(item, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CaptureError(f"probe {item}: cannot read it as a .npy array ({exc})") from None
    if a.ndim not in (1, 2) or a.size == 0 or not np.issubdtype(a.dtype, np.number):
        raise CaptureError(f"probe {item}: a .npy direction is [d_model] or [layers, d_model], got {list(a.shape)}")
    return np.asarray(a, dtype=np.float32)


def every_layer(a: np.ndarray, n_layers: int, where: str) -> Direction:
    """A ``.npy`` array as a Direction at every layer: one vector repeated, or one row per layer."""
    if a.ndim == 1:
        a = np.broadcast_to(a, (n_layers, a.shape[0]))
    elif a.shape[0] != n_layers:
        raise CaptureError(f"{where}: {a.shape[0]} rows, the model has {n_layers} layers (one row per layer)")
    return Direction(Vector.of(np.ascontiguousarray(a)), tuple(range(n_layers)))


def unit_rows(d: Direction, where: str) -> np.ndarray:
    """float32 ``[len(layers), d_model]``: each layer's vector over its norm; a zero vector is one line."""
    a = d.array().astype(np.float64)
    norms = np.linalg.norm(a, axis=-1)
    if (norms == 0).any():
        raise CaptureError(f"{where}: its vector at layer {d.layers[int(np.argmin(norms))]} is zero (no direction)")
    out: np.ndarray = (a / norms[:, None]).astype(np.float32)
    return out


def probe_readout(acts: Any, units: Any, cols: Sequence[int], n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """One step's rows of one probe: ``acts`` ``[n, L, d]`` (the signal's full vectors, any dtype and
    device), ``units`` float32 ``[m, d]`` on that device (the unit direction at each of ``cols``, the
    layers of ``acts`` it reads). Returns ``(cosine, projection)``, float32 ``[n, n_layers]`` numpy,
    NaN at the other layers (and the cosine of a zero vector)."""
    import torch

    with torch.inference_mode():
        x = acts[:, list(cols)].float()  # [n, m, d]
        proj = torch.einsum("nmd,md->nm", x, units)
        norm = x.norm(dim=-1)
        cos = torch.where(norm > 0, proj / norm, torch.full_like(proj, float("nan")))
        pair = torch.stack([cos, proj]).cpu().numpy()
    n = pair.shape[1]
    out: np.ndarray = np.full((2, n, n_layers), np.nan, dtype=np.float32)
    out[:, :, list(cols)] = pair
    return out[0], out[1]
