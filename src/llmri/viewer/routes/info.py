"""``GET /api/info`` (version, stores, features) and ``GET /api/colormaps`` (the colour maps' LUTs)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter

from ... import __version__
from ...render import colormaps
from . import State
from .frames import MAX_RANGE

router = APIRouter()


def colormap_luts() -> dict[str, Any]:
    """``{"names", "luts", "kinds"}``: every colour map as a flat ``[r0, g0, b0, r1, ...]`` list of 768 ints
    and its kind (magnitude/signed), from llmri.colormaps so the viewer and the PNG exporter agree."""
    names = list(colormaps.COLORMAPS)
    luts = {name: [int(v) for v in np.asarray(colormaps.lut(name), np.uint8).reshape(-1)] for name in names}
    return {"names": names, "luts": luts, "kinds": {name: colormaps.kind(name) for name in names}}


@router.get("/api/info")
def info(state: State) -> Any:
    return {
        "version": __version__,
        "stores": [{"id": e.id, "label": e.label} for e in state.stores.values()],
        "live": state.live is not None,
        "colormaps": list(colormaps.COLORMAPS),
        "max_range": MAX_RANGE,
    }


@router.get("/api/colormaps")
def colormap_tables() -> Any:
    return colormap_luts()
