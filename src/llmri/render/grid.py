"""Frame layout: one frame's ``[layers, H, W]`` tiles laid out as one RGB image.

The browser viewer reproduces this layout exactly (see :data:`LAYOUT` and :func:`layout_json`):

- ``cols = ceil(sqrt(L))``, ``rows = ceil(L / cols)`` (:func:`grid_shape`); layer ``l`` sits in
  grid row ``l // cols``, column ``l % cols`` (row-major, layer 0 top left).
- Every tile value becomes a ``pixel`` x ``pixel`` block; tile row ``h`` goes down, tile column
  ``w`` goes right.
- Neighbouring tiles are separated by a ``gap`` of 1 image pixel (not scaled by ``pixel``); there
  is no outer border. Image size: ``width = cols * W * pixel + (cols - 1) * gap`` and
  ``height = rows * H * pixel + (rows - 1) * gap``; tile ``l``'s top-left pixel is at
  ``x = (l % cols) * (W * pixel + gap)``, ``y = (l // cols) * (H * pixel + gap)``.
- Gaps and empty grid cells are :data:`BACKGROUND`; a value that overflowed the frame dtype (±inf) is
  :data:`OVERFLOW`.
- Colours follow :mod:`llmri.render.colormaps` with per-layer scales ``meta["scales"][signal]``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from .colormaps import apply

BACKGROUND: tuple[int, int, int] = (32, 32, 32)
#: A value that overflowed the frame dtype (±inf): its own colour, in none of the maps (as the viewer draws it).
OVERFLOW: tuple[int, int, int] = (255, 0, 255)
GAP = 1

LAYOUT = {"gap": GAP, "background": list(BACKGROUND), "order": "row-major"}


def grid_shape(n_layers: int) -> tuple[int, int]:
    """``(rows, cols)`` of the tile grid: ``cols = ceil(sqrt(n))``, ``rows = ceil(n / cols)``."""
    n = int(n_layers)
    if n <= 0:
        return 0, 0
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def frame_size(n_layers: int, h: int, w: int, pixel: int = 1, gap: int = GAP) -> tuple[int, int]:
    """``(height, width)`` in pixels of a rendered frame."""
    rows, cols = grid_shape(n_layers)
    if rows == 0:
        return 0, 0
    return rows * h * pixel + (rows - 1) * gap, cols * w * pixel + (cols - 1) * gap


def fallback_scales(tiles: np.ndarray) -> np.ndarray:
    """Per-layer scales when the session has none: the 99th percentile of ``|tiles|`` per layer (NaN
    counts as 0; ±inf, an overflowed value, is left out, so it never makes a scale infinite)."""
    t = np.abs(np.nan_to_num(np.asarray(tiles, dtype=np.float32), nan=0.0, posinf=np.nan, neginf=np.nan))
    t = t.reshape(t.shape[0], -1) if t.ndim == 3 else np.moveaxis(t, 1, 0).reshape(t.shape[1], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer of nothing but overflow: scale 1e-6
        q = np.nanquantile(t, 0.99, axis=1)
    return np.maximum(np.nan_to_num(q, nan=1e-6), 1e-6)


def render_frame(tiles: Any, scales: Any, cmap: str = "energy", *, pixel: int = 1, gap: int = GAP) -> np.ndarray:
    """Render ``tiles`` ``[L, H, W]`` to ``uint8[height, width, 3]`` RGB (layout above).

    ``scales``: ``[L]`` per-layer scales (``meta["scales"][signal]``), or ``None`` to use
    :func:`fallback_scales` of these tiles. ``cmap``: a name in :data:`llmri.render.colormaps.COLORMAPS`.
    """
    tiles = np.asarray(tiles)
    if tiles.ndim != 3:
        raise ValueError(f"tiles must be [layers, H, W], got shape {tiles.shape}")
    n, h, w = tiles.shape
    pixel = int(pixel)
    if pixel < 1:
        raise ValueError(f"pixel must be >= 1, got {pixel}")
    sc = fallback_scales(tiles) if scales is None or len(scales) != n else np.asarray(scales, dtype=object)
    rgb = apply(tiles, np.asarray(sc, dtype=object).reshape(n, 1, 1), cmap)  # [L, H, W, 3]
    rgb[np.isinf(tiles)] = OVERFLOW  # not the brightest value: it is not known
    if pixel > 1:
        rgb = rgb.repeat(pixel, axis=1).repeat(pixel, axis=2)
    height, width = frame_size(n, h, w, pixel, gap)
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = BACKGROUND
    _, cols = grid_shape(n)
    th, tw = h * pixel, w * pixel
    for layer in range(n):
        y = (layer // cols) * (th + gap)
        x = (layer % cols) * (tw + gap)
        out[y : y + th, x : x + tw] = rgb[layer]
    return out


def session_scales(meta: dict[str, Any], signal: str) -> list[float] | None:
    """The per-layer scales of ``signal`` stored with a session, or ``None`` when it has none."""
    sc = (meta.get("scales") or {}).get(signal)
    n = len(meta.get("layers") or [])
    return list(sc) if isinstance(sc, list) and len(sc) == n and n else None


def layout_json() -> dict[str, Any]:
    """The layout constants for the viewer."""
    return dict(LAYOUT)


__all__ = [
    "BACKGROUND",
    "GAP",
    "LAYOUT",
    "OVERFLOW",
    "frame_size",
    "grid_shape",
    "layout_json",
    "render_frame",
    "session_scales",
]
