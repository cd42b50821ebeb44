"""A session as an ``xarray.Dataset`` and its token table as a ``pandas.DataFrame`` (the ``xarray``
extra): :meth:`SessionReader.to_xarray` and :meth:`SessionReader.tokens_df`.

Built on the reader's interface only, so every store's sessions have them. A reader that
:class:`~llmri.store.base.SupportsArrays` gives dask arrays over its stored chunks (no data
variable is read until computed; the ``text`` and ``role`` coordinates are read at once); any other
reader's arrays are numpy (read-only views where it holds them).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import require
from ..frame import TOP_K, frame_dtype_of, from_bfloat16_bits
from .layout import LAYER, RANK, TILE_X, TILE_Y, TOKEN, readout_layout
from .saes import sae_paths

if TYPE_CHECKING:
    from .base import SessionReader

#: The variable of readout field ``<kind>/<field>`` in :func:`session_dataset`.
READOUT_PREFIX = {"lens": "lens_", "attention": "attn_"}

#: The token table: (variable, stored column, axes); text and role become coordinates.
TOKEN_COLUMNS = (
    ("token_id", "tokens/ids", (TOKEN,)),
    ("logprob", "tokens/logprob", (TOKEN,)),
    ("entropy", "tokens/entropy", (TOKEN,)),
    ("top_ids", "tokens/top_ids", (TOKEN, RANK)),
    ("top_probs", "tokens/top_probs", (TOKEN, RANK)),
    ("top_texts", "tokens/top_texts", (TOKEN, RANK)),
)


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


def _lazy(session: Any, name: str, n: int) -> Any:
    """The first ``n`` rows of stored column ``name`` as a dask array, one dask chunk per stored chunk."""
    import dask.array as da

    arr = session.array(name)
    out = da.from_array(arr, chunks=arr.chunks, name=False, inline_array=True)[:n]  # type: ignore[no-untyped-call,unused-ignore]  # untyped in the library
    if name.startswith("frames/") and frame_dtype_of(session.meta) == "bfloat16" and out.dtype == np.uint16:
        out = out.map_blocks(from_bfloat16_bits, dtype=np.float32)  # stored as bits: zarr has no bfloat16
    if out.dtype.kind not in "biuf":
        out = out.astype(object)  # zarr's strings (numpy StringDType) as Python strings, as pandas holds them
    return out


def _eager_columns(session: SessionReader) -> dict[str, Any]:
    """Every stored column of ``session`` as numpy, from the reader's interface."""
    t = session.tokens
    n, k = len(t), int(session.meta.get("top_k", TOP_K))
    texts = np.full((n, k), "", dtype=object)
    for i, row in enumerate(t.top_texts or []):
        texts[i, : min(k, len(row))] = list(row)[:k]
    top_ids = np.full((n, k), -1, np.int64)
    top_probs = np.full((n, k), np.nan, np.float32)
    m = min(k, t.top_ids.shape[1]) if t.top_ids.ndim == 2 else 0
    top_ids[:, :m], top_probs[:, :m] = t.top_ids[:, :m], t.top_probs[:, :m]
    cols: dict[str, Any] = {
        "tokens/ids": t.ids,
        "tokens/text": np.array(t.text, dtype=object),
        "tokens/role": np.array(t.role, dtype=object),
        "tokens/logprob": t.logprob,
        "tokens/entropy": t.entropy,
        "tokens/top_ids": top_ids,
        "tokens/top_probs": top_probs,
        "tokens/top_texts": texts,
    }
    for s in session.signals:
        cols[f"frames/{s}"] = session.frames(s)
        cols[f"stats/{s}/norm"], cols[f"stats/{s}/sparsity"] = session.stats(s)
    for kind in session.readouts:
        table = session.lens() if kind == "lens" else session.attention()
        cols.update({f"{kind}/{name}": a for name, a in table.arrays().items()})
    for sae in session.saes:
        cols.update({f"sae/{sae}/{f}": a for f, a in session.sae_arrays(sae, 0, len(session)).items()})
    return {name: _readonly(np.asarray(a)) for name, a in cols.items()}


def session_dataset(session: SessionReader) -> Any:
    """:meth:`SessionReader.to_xarray`: the session's committed rows as an ``xarray.Dataset``."""
    xr = require("xarray", "xarray")
    n = len(session)
    if callable(getattr(session, "array", None)):  # SupportsArrays (a runtime Protocol checks no more)
        require("dask.array", "xarray")

        def col(name: str) -> Any:
            return _lazy(session, name, n)
    else:
        eager = _eager_columns(session)

        def col(name: str) -> Any:
            return eager[name]

    data: dict[str, Any] = {}
    for s in session.signals:
        data[s] = ((TOKEN, LAYER, TILE_Y, TILE_X), col(f"frames/{s}"))
        data[f"{s}_norm"] = ((TOKEN, LAYER), col(f"stats/{s}/norm"))
        data[f"{s}_sparsity"] = ((TOKEN, LAYER), col(f"stats/{s}/sparsity"))
    for var, name, dims in TOKEN_COLUMNS:
        data[var] = (dims, col(name))
    for kind, fields in readout_layout(session.meta).items():
        for name, (_, row_dims) in fields.items():
            data[READOUT_PREFIX[kind] + name] = ((TOKEN, *row_dims), col(f"{kind}/{name}"))
    for path, (_, _, row_dims) in sae_paths(session.meta).items():  # sae/{name}/{field} -> sae_{name}_{field}
        data["sae_" + path[4:].replace("/", "_")] = ((TOKEN, *row_dims), col(path))
    # text and role are read now: coordinates select (``ds.where(ds.role == "generated", drop=True)``
    # needs them in memory), and they are a small part of a session; every data variable stays lazy
    coords: dict[str, Any] = {
        TOKEN: np.arange(n, dtype=np.int64),
        "text": ((TOKEN,), np.asarray(col("tokens/text"), dtype=object)),
        "role": ((TOKEN,), np.asarray(col("tokens/role"), dtype=object)),
    }
    if session.signals:
        coords[LAYER] = np.array(session.layers, dtype=object)
    return xr.Dataset(data, coords=coords, attrs=copy.deepcopy(session.meta))


def tokens_frame(session: SessionReader) -> Any:
    """:meth:`SessionReader.tokens_df`: the token table as a ``pandas.DataFrame``."""
    pd = require("pandas", "xarray")
    t = session.tokens
    valid = t.top_ids >= 0
    texts = t.top_texts or [[] for _ in range(len(t))]
    return pd.DataFrame(
        {
            "id": t.ids,
            "text": t.text,
            "role": t.role,
            "logprob": t.logprob,
            "entropy": t.entropy,
            "top_ids": [row[ok].tolist() for row, ok in zip(t.top_ids, valid, strict=True)],
            "top_probs": [row[ok].tolist() for row, ok in zip(t.top_probs, valid, strict=True)],
            "top_texts": [list(row) for row in texts],
        },
        index=pd.RangeIndex(len(t), name=TOKEN),
    )
