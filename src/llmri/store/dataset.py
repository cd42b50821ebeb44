"""A session as an ``xarray.Dataset`` and its token table as a ``pandas.DataFrame`` (the ``xarray``
extra): :meth:`SessionReader.to_xarray` and :meth:`SessionReader.tokens_df`.

Built on the reader's interface only, so every store's sessions have them. A reader that
:class:`~llmri.store.abilities.SupportsArrays` gives dask arrays over its stored chunks (no data
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
from .probes import probe_paths
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
    for probe in session.probes:
        cols.update({f"probes/{probe}/{f}": a for f, a in session.probe_arrays(probe, 0, len(session)).items()})
    return {name: _readonly(np.asarray(a)) for name, a in cols.items()}


def _variables(session: SessionReader) -> list[tuple[str, str, tuple[str, ...]]]:
    """The data variables of a session's dataset: ``(variable, stored column, axes)``."""
    out: list[tuple[str, str, tuple[str, ...]]] = []
    for s in session.signals:
        out.append((s, f"frames/{s}", (TOKEN, LAYER, TILE_Y, TILE_X)))
        out.append((f"{s}_norm", f"stats/{s}/norm", (TOKEN, LAYER)))
        out.append((f"{s}_sparsity", f"stats/{s}/sparsity", (TOKEN, LAYER)))
    out += [(var, name, dims) for var, name, dims in TOKEN_COLUMNS]
    for kind, fields in readout_layout(session.meta).items():
        for name, (_, row_dims) in fields.items():
            out.append((READOUT_PREFIX[kind] + name, f"{kind}/{name}", (TOKEN, *row_dims)))
    for path, (_, _, row_dims) in sae_paths(session.meta).items():  # sae/{name}/{field} -> sae_{name}_{field}
        out.append(("sae_" + path[4:].replace("/", "_"), path, (TOKEN, *row_dims)))
    for path, (_, _, row_dims) in probe_paths(session.meta).items():  # probes/{name}/{field} -> probe_{name}_{field}
        out.append(("probe_" + path[7:].replace("/", "_"), path, (TOKEN, *row_dims)))
    return out


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

    data = {var: (dims, col(name)) for var, name, dims in _variables(session)}
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


# -- a whole store (a study) ------------------------------------------------------------------
#: The session axis of :func:`store_dataset`.
SESSION = "session"


def _fill(dtype: np.dtype[Any]) -> Any:
    """What pads a shorter session's rows: NaN for floats, -1 for integers, "" for strings."""
    return np.nan if dtype.kind == "f" else (-1 if dtype.kind in "biu" else "")


def _block(session: SessionReader, name: str, n: int) -> np.ndarray:
    """One session's column ``name`` padded to ``n`` rows, with a leading session axis of 1: the
    task of one block of :func:`store_dataset` (the column is opened and read only here)."""
    if callable(getattr(session, "array", None)):  # SupportsArrays
        a = np.asarray(_lazy(session, name, len(session)).compute())
    else:
        a = _eager_columns(session)[name]
    if a.dtype.kind not in "biuf":
        a = a.astype(object)
    pad = np.full((n - a.shape[0], *a.shape[1:]), _fill(a.dtype), dtype=a.dtype)
    return np.concatenate([a, pad], axis=0)[None]


def _layout(s: SessionReader) -> tuple[Any, ...]:
    return (
        tuple(s.signals),
        tuple(s.layers),
        tuple(s.tile),
        frame_dtype_of(s.meta),
        str(readout_layout(s.meta)),
        str(sae_paths(s.meta)),
        str(probe_paths(s.meta)),
    )


def _study_coords(sessions: list[SessionReader]) -> dict[str, Any]:
    """Per session: ``status``, ``prompt_id`` (a study's row id) and each key of the rows' metadata."""
    studies: list[dict[str, Any]] = []
    for s in sessions:
        st = s.meta.get("study")
        studies.append(st if isinstance(st, dict) else {})
    rows: list[dict[str, Any]] = []
    for st in studies:
        md = st.get("metadata")
        rows.append(md if isinstance(md, dict) else {})

    def column(values: list[Any]) -> Any:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return ((SESSION,), out)

    coords: dict[str, Any] = {
        "status": column([s.status for s in sessions]),
        "prompt_id": column([st.get("id") or "" for st in studies]),
    }
    for k in sorted({k for row in rows for k in row}):
        if k not in coords and k not in (SESSION, TOKEN, LAYER):
            coords[k] = column([row.get(k) for row in rows])
    return coords


def store_dataset(sessions: list[SessionReader], where: str) -> Any:
    """:meth:`FrameStore.to_xarray`: ``sessions`` (one layout) as one Dataset with a ``session``
    axis; each session's token axis padded to the longest (see the method)."""
    from .._errors import StoreError

    xr = require("xarray", "xarray")
    if not sessions:
        raise StoreError(f"{where}: no sessions to put in a dataset")
    first = _layout(sessions[0])
    for s in sessions[1:]:
        if _layout(s) != first:
            raise StoreError(
                f"{where}: session {s.id} is laid out unlike {sessions[0].id} (signals, layers, tile, dtype or "
                "readouts): pass sessions= of one layout"
            )
    import dask.array as da
    from dask.base import tokenize

    first = session_dataset(sessions[0])  # each variable's row shape and dtype (nothing read)
    n = max(len(s) for s in sessions)
    stamp = tokenize(where, [(s.id, len(s)) for s in sessions])
    data: dict[str, Any] = {}
    columns = [*_variables(sessions[0]), ("text", "tokens/text", (TOKEN,)), ("role", "tokens/role", (TOKEN,))]
    for var, name, dims in columns:
        row = first[var].shape[1:]
        dtype = first[var].dtype if first[var].dtype.kind in "biuf" else np.dtype(object)
        key = f"llmri-study-{var}-{stamp}"
        # one block per session, read by its own task: opening the dataset reads no column at all
        graph = {(key, i, *(0,) * (1 + len(row))): (_block, s, name, n) for i, s in enumerate(sessions)}
        chunks = ((1,) * len(sessions), (n,), *((d,) for d in row))
        data[var] = ((SESSION, *dims), da.Array(graph, key, chunks, dtype=dtype))  # type: ignore[no-untyped-call,unused-ignore]  # untyped in the library
    data["length"] = ((SESSION,), np.array([len(s) for s in sessions], dtype=np.int64))
    coords: dict[str, Any] = {SESSION: np.array([s.id for s in sessions], dtype=object), TOKEN: np.arange(n)}
    if LAYER in first.coords:
        coords[LAYER] = first[LAYER].values
    coords.update(_study_coords(sessions))
    return xr.Dataset(data, coords=coords)


def store_tokens_frame(sessions: list[SessionReader]) -> Any:
    """:meth:`FrameStore.tokens_df`: every session's token table, one ``(session, token)`` index,
    with each session's study columns (:func:`_study_coords`)."""
    pd = require("pandas", "xarray")
    frames = []
    for s in sessions:
        df = tokens_frame(s)
        for key, (_, values) in _study_coords([s]).items():
            df[key] = values[0]
        df.insert(0, SESSION, s.id)
        frames.append(df.reset_index())
    if not frames:
        return pd.DataFrame(columns=[SESSION, TOKEN]).set_index([SESSION, TOKEN])
    return pd.concat(frames, ignore_index=True).set_index([SESSION, TOKEN])
