"""Colour maps: the one definition shared by the exporters and the browser viewer.

The viewer fetches :func:`colormaps_json` from its server and must map values exactly as
:func:`normalise` and :func:`lut_index` do here. The rules, step by step, for a value ``v`` of a
tile of layer ``l`` of signal ``s``:

1. ``scale = meta["scales"][s][l]`` (the 99th percentile of ``|tile|`` of that layer on the
   calibration text). A missing, non-finite or non-positive scale counts as ``1.0``.
2. ``u = v / scale``, clipped to ``[-1, 1]``; a NaN ``v`` counts as ``0``.
3. The LUT coordinate ``x`` in ``[0, 1]``: ``x = |u|`` for a ``magnitude`` map (grayscale,
   energy); ``x = (u + 1) / 2`` for a ``signed`` map (diverging).
4. The LUT index ``i = floor(x * 255 + 0.5)`` (round half up), clipped to ``[0, 255]``;
   the colour is ``lut[i]`` (``[r, g, b]``, 0..255).

Every LUT is built from its ``stops`` (``[position, [r, g, b]]``, positions from 0 to 1) by
linear interpolation per channel at ``t = i / 255``, each channel rounded half up to an integer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: name -> (kind, stops). ``kind`` is ``"magnitude"`` (colour by |v|) or ``"signed"``.
COLORMAPS: dict[str, tuple[str, list[tuple[float, tuple[int, int, int]]]]] = {
    "grayscale": ("magnitude", [(0.0, (0, 0, 0)), (1.0, (255, 255, 255))]),
    "energy": (
        "magnitude",
        [(0.0, (0, 0, 128)), (1 / 3, (0, 255, 255)), (2 / 3, (255, 255, 0)), (1.0, (255, 0, 0))],
    ),
    "diverging": ("signed", [(0.0, (49, 54, 149)), (0.5, (255, 255, 255)), (1.0, (165, 0, 38))]),
}

DEFAULT_COLORMAP = "energy"


def _check(name: str) -> None:
    if name not in COLORMAPS:
        from .._errors import LlmriError

        raise LlmriError(f"unknown colour map {name!r} (choose from {', '.join(COLORMAPS)})")


def kind(name: str) -> str:
    """``"magnitude"`` or ``"signed"``: how :func:`normalise` maps values for this map."""
    _check(name)
    return COLORMAPS[name][0]


def lut(name: str) -> np.ndarray:
    """The 256-entry lookup table of colour map ``name``: ``uint8[256, 3]`` RGB."""
    _check(name)
    stops = COLORMAPS[name][1]
    pos = np.array([p for p, _ in stops], dtype=np.float64)
    cols = np.array([c for _, c in stops], dtype=np.float64)
    t = np.arange(256, dtype=np.float64) / 255.0
    out = np.stack([np.interp(t, pos, cols[:, ch]) for ch in range(3)], axis=1)
    return np.floor(out + 0.5).clip(0, 255).astype(np.uint8)


def safe_scale(scale: Any) -> float:
    """Rule 1: a missing, non-finite or non-positive scale counts as 1.0."""
    try:
        s = float(scale)
    except (TypeError, ValueError):
        return 1.0
    return s if math.isfinite(s) and s > 0 else 1.0


def normalise(values: Any, scale: Any, mode: str) -> np.ndarray:
    """Rules 2-3: values -> LUT coordinate in ``[0, 1]`` (float32, same shape as ``values``).

    ``scale`` is a number, or an array that broadcasts against ``values`` (e.g. ``[L, 1, 1]``
    for ``[L, H, W]`` tiles); each element follows rule 1. ``mode`` is ``"magnitude"`` or
    ``"signed"`` (or a colour map name, whose kind is used).
    """
    if mode in COLORMAPS:
        mode = kind(mode)
    if mode not in ("magnitude", "signed"):
        raise ValueError(f"mode must be 'magnitude' or 'signed', got {mode!r}")
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=np.inf, neginf=-np.inf)
    sc = np.vectorize(safe_scale, otypes=[np.float32])(np.asarray(scale, dtype=object))
    u = np.clip(v / sc, -1.0, 1.0)
    return (np.abs(u) if mode == "magnitude" else (u + 1.0) / 2.0).astype(np.float32)


def lut_index(x: Any) -> np.ndarray:
    """Rule 4: LUT coordinate in ``[0, 1]`` -> ``uint8`` index (round half up, clipped)."""
    return np.clip(np.floor(np.asarray(x, dtype=np.float64) * 255.0 + 0.5), 0, 255).astype(np.uint8)


def apply(values: Any, scale: Any, name: str) -> np.ndarray:
    """Values -> ``uint8[..., 3]`` RGB through colour map ``name`` (rules 1-4)."""
    return lut(name)[lut_index(normalise(values, scale, kind(name)))]


def colormaps_json() -> dict[str, Any]:
    """``{name: {"kind", "stops", "lut"}}`` for the viewer (``lut``: 256 ``[r, g, b]`` lists)."""
    return {
        name: {"kind": k, "stops": [[p, list(c)] for p, c in stops], "lut": lut(name).tolist()}
        for name, (k, stops) in COLORMAPS.items()
    }


__all__ = ["COLORMAPS", "DEFAULT_COLORMAP", "apply", "colormaps_json", "kind", "lut", "lut_index", "normalise"]
