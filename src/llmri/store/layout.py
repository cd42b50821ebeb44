"""The names a session's arrays are stored under (docs/FORMAT.md, "Axes" and "Readouts"): its axes,
and the shape of each readout's rows. Shared by the writers, the readers and ``to_xarray``."""

from __future__ import annotations

from typing import Any

from ..frame import ATTENTION_FIELDS, LENS_FIELDS, LENS_TEXT

# The names of a session's axes (docs/FORMAT.md, "Axes"): the stored arrays' ``dimension_names``
# and the dimensions of :meth:`SessionReader.to_xarray`. One axis has one name in every array.
TOKEN = "token"  # token position, prompt tokens first
LAYER = "layer"  # index into meta["layers"]
TILE_Y = "tile_y"  # row of a tile (H)
TILE_X = "tile_x"  # column of a tile (W)
RANK = "rank"  # of the top-k alternatives, 0 the most probable
HEAD = "head"  # an attention head, for per-head arrays
ATTN_RANK = "attn_rank"  # of the most attended positions, 0 the largest weight (k differs from ``rank``'s)

#: The readouts a session may hold: ``meta[kind]`` says it does (docs/FORMAT.md, "Readouts").
READOUTS: dict[str, tuple[str, ...]] = {"lens": LENS_FIELDS, "attention": ATTENTION_FIELDS}


#: One readout field's row: its shape and the names of its axes (the token axis first, unnamed).
RowLayout = tuple[tuple[int, ...], tuple[str, ...]]


def readout_layout(meta: dict[str, Any]) -> dict[str, dict[str, RowLayout]]:
    """``{kind: {field: (row shape, row axes)}}`` of the readouts ``meta`` says a session holds:
    ``meta["lens"] = {"k": k}`` (with ``"texts": true``, also ``top_text``) and
    ``meta["attention"] = {"k": k, "heads": H}`` (absent or null: none)."""
    n_layers = len(meta.get("layers") or [])
    out: dict[str, dict[str, RowLayout]] = {}
    top: RowLayout
    per: RowLayout
    lens = meta.get("lens")
    if isinstance(lens, dict):
        k = int(lens.get("k", 5))
        top, per = ((n_layers, k), (LAYER, RANK)), ((n_layers,), (LAYER,))
        out["lens"] = {"top_ids": top, "top_probs": top, "next_prob": per, "next_rank": per, "entropy": per}
        if lens.get("texts"):  # each top id's text (older sessions have none)
            out["lens"][LENS_TEXT] = top
    attn = meta.get("attention")
    if isinstance(attn, dict):
        k, h = int(attn.get("k", 16)), int(attn.get("heads", 0))
        top, per = ((n_layers, h, k), (LAYER, HEAD, ATTN_RANK)), ((n_layers, h), (LAYER, HEAD))
        out["attention"] = {"top_pos": top, "top_weight": top, "entropy": per, "sink": per}
    return out
