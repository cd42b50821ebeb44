"""The arrays of a session (docs/FORMAT.md, "Layout"): their specs, a frame's row in each, and how
a column grows by whole chunks. No zarr here: numpy and the session's metadata only."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..._errors import StoreError
from ...frame import READOUT_DTYPES, TOP_K, Frame, bfloat16_bits, fit_into, frame_dtype_of
from ..base import READ_VERSION, STATUSES
from ..layout import LAYER, RANK, TILE_X, TILE_Y, TOKEN, readout_layout
from ..probes import probe_names, probe_paths, probe_rows
from ..saes import SAELayout, sae_paths, sae_rows

#: Frames per chunk along the token axis of ``frames/<signal>``.
FRAME_CHUNK = 16
#: Rows per chunk of the token table and the per-layer stats.
ROW_CHUNK = 256
#: Rows a new array has room for before it first grows: a typical turn, so a session's first commits
#: write chunks only (growing 17 arrays cost ~12 ms of CPU in the first commit).
INITIAL_ROWS = 1024

#: How ``frames/<signal>`` is stored per frame dtype: zarr 3.1 has no bfloat16, so bfloat16 tiles are
#: stored as their bit patterns in uint16 (docs/FORMAT.md, "Frame dtypes"); the other two as themselves.
FRAME_STORED: dict[str, type] = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}
#: The fill value of a bfloat16 column: the bit pattern of NaN (uint16 is used for nothing else).
BFLOAT16_NAN = 0x7FC0

#: Each signal's tiles and stats carry ``<group>/layer``: the layer names, as a coordinate array.
COORDINATE = "layer"
#: The most bytes of one chunk of a readout array (attention's top-k rows are wide; ``k="full"``
#: rows are the whole context): its rows per chunk are cut to stay under this.
READOUT_CHUNK_BYTES = 1 << 22


class ColumnSpec(NamedTuple):
    """One per-token array: its dtype (``str`` for zarr's string dtype), the shape of one row, the
    rows per chunk, and the names of a row's axes (the token axis comes first, unnamed here)."""

    dtype: Any
    row_shape: tuple[int, ...]
    chunk: int
    row_dims: tuple[str, ...] = ()

    @property
    def dimension_names(self) -> tuple[str, ...]:
        """The array's ``dimension_names``: ``token`` then the row's axes."""
        return (TOKEN, *self.row_dims)


def column_specs(meta: dict[str, Any]) -> dict[str, ColumnSpec]:
    """``{path: spec}`` of the per-token arrays of a session."""
    n_layers = len(meta["layers"])
    h, w = (int(x) for x in meta["tile"])
    k = int(meta.get("top_k", TOP_K))
    specs = {
        "tokens/ids": ColumnSpec(np.int64, (), ROW_CHUNK),
        "tokens/text": ColumnSpec(str, (), ROW_CHUNK),
        "tokens/role": ColumnSpec(str, (), ROW_CHUNK),
        "tokens/logprob": ColumnSpec(np.float32, (), ROW_CHUNK),
        "tokens/entropy": ColumnSpec(np.float32, (), ROW_CHUNK),
        "tokens/top_ids": ColumnSpec(np.int64, (k,), ROW_CHUNK, (RANK,)),
        "tokens/top_probs": ColumnSpec(np.float32, (k,), ROW_CHUNK, (RANK,)),
        "tokens/top_texts": ColumnSpec(str, (k,), ROW_CHUNK, (RANK,)),
    }
    stored = FRAME_STORED[frame_dtype_of(meta)]
    for s in meta["signals"]:
        specs[f"frames/{s}"] = ColumnSpec(stored, (n_layers, h, w), FRAME_CHUNK, (LAYER, TILE_Y, TILE_X))
        specs[f"stats/{s}/norm"] = ColumnSpec(np.float32, (n_layers,), ROW_CHUNK, (LAYER,))
        specs[f"stats/{s}/sparsity"] = ColumnSpec(np.float32, (n_layers,), ROW_CHUNK, (LAYER,))
    for kind, fields in readout_layout(meta).items():
        for name, (shape, dims) in fields.items():
            dtype = READOUT_DTYPES[name]
            # a text is taken as 8 bytes (a short token's UTF-8 bytes and its length)
            row_bytes = int(np.prod(shape, dtype=np.int64)) * (8 if dtype is str else np.dtype(dtype).itemsize)
            chunk = max(1, min(ROW_CHUNK, READOUT_CHUNK_BYTES // max(1, row_bytes)))
            specs[f"{kind}/{name}"] = ColumnSpec(dtype, shape, chunk, dims)
    for path, (dtype, shape, dims) in sae_paths(meta).items():  # sae/{name}/{field} (store/saes.py)
        specs[path] = ColumnSpec(dtype, shape, ROW_CHUNK, dims)
    for path, (dtype, shape, dims) in probe_paths(meta).items():  # probes/{name}/{field} (store/probes.py)
        specs[path] = ColumnSpec(dtype, shape, ROW_CHUNK, dims)
    return specs


def coordinate_arrays(meta: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """``{path: values}`` of the coordinate arrays of a session: ``<group>/layer``, the layer names,
    beside the tiles and the stats of each signal, so xarray labels the ``layer`` axis."""
    layers = tuple(str(x) for x in meta["layers"])
    if not layers or not meta["signals"]:
        return {}
    groups = ["frames", *(f"stats/{s}" for s in meta["signals"]), *readout_layout(meta)]
    groups += [f"probes/{n}" for n in probe_names(meta)]
    return {f"{g}/{COORDINATE}": layers for g in groups}


def state_dimension_names(key: str, ndim: int) -> tuple[str, ...]:
    """The ``dimension_names`` of ``reducer_state/<key>``: the store does not know what a reducer's
    axes mean, so each array's own (``<key>_dim_0``, ...), which never clash between arrays."""
    return tuple(f"{key}_dim_{i}" for i in range(ndim))


def dimension_names_for(path: str, ndim: int, meta: dict[str, Any]) -> tuple[str, ...] | None:
    """The ``dimension_names`` llmri gives the array at ``path`` (relative to its session) with
    ``ndim`` axes, or None for an array it does not know (for :mod:`~llmri.store.zarr.upgrade`)."""
    spec = column_specs(meta).get(path)
    if spec is not None:
        names: tuple[str, ...] | None = spec.dimension_names
    elif path in coordinate_arrays(meta):
        names = (LAYER,)
    elif path.startswith("reducer_state/") and path.count("/") == 1:
        names = state_dimension_names(path.split("/", 1)[1], ndim)
    else:
        return None
    return names if names is not None and len(names) == ndim else None


def column_compressors(name: str, compress: bool) -> Any:
    """zarr's ``compressors`` for column ``name``: ``frames/*`` raw unless ``compress`` (the reduced
    tiles are noise-like, see docs/FORMAT.md, "Compression"), zarr's default elsewhere."""
    if name.startswith("frames/") and not compress:
        return None
    return "auto"


def stored_attributes(dtype: Any) -> dict[str, Any] | None:
    """The attributes of an array stored as ``dtype``: bfloat16 bits say so, for readers without llmri."""
    if dtype is np.uint16:
        return {"llmri": {"dtype": "bfloat16", "decode": "(uint32(x) << 16).view(float32)"}}
    return None


def fill_value(dtype: Any) -> Any:
    """What pads rows past the data: ``""`` for strings, -1 for ids, NaN for floats (and bfloat16 bits)."""
    if dtype is str:
        return ""
    if np.dtype(dtype) == np.uint16:
        return BFLOAT16_NAN
    if np.issubdtype(np.dtype(dtype), np.integer):
        return -1
    return np.nan


def check_format_version(llm: dict[str, Any], where: str, what: str = "metadata") -> None:
    """Refuse a group whose ``format_version`` is missing or newer than this llmri reads."""
    fv = llm.get("format_version")
    if not isinstance(fv, int):
        raise StoreError(f"{where}: corrupt {what} (format_version {fv!r})")
    if fv > READ_VERSION:
        raise StoreError(
            f"{where}: written by a newer llmri (format {fv}; this llmri reads up to {READ_VERSION}): upgrade llmri"
        )


def check_meta(meta: dict[str, Any]) -> str:
    """What is wrong with a session's metadata for laying out its arrays, or ``""``."""
    sig = meta.get("signals")
    if not isinstance(sig, list) or not all(isinstance(s, str) for s in sig):
        return "signals must be a list of names"
    if not isinstance(meta.get("layers"), list):
        return "layers must be a list"
    tile = meta.get("tile")
    if not (isinstance(tile, list) and len(tile) == 2 and all(isinstance(x, int) for x in tile)):
        return f"tile must be [H, W], got {tile!r}"
    if any(not s or "/" in s or s in (".", "..", COORDINATE) for s in sig):
        return f"bad signal names {sig!r}"
    if meta.get("status") not in STATUSES:
        return f"unknown status {meta.get('status')!r}"
    return ""


def frame_rows(
    frame: Frame,
    signals: list[str],
    k: int,
    readouts: dict[str, dict[str, Any]] | None = None,
    saes: dict[str, SAELayout] | None = None,
    probes: list[str] | None = None,
) -> dict[str, Any]:
    """The row of each column for one frame (``top_*`` padded to ``k``; each readout field of
    ``readouts``, :func:`~llmri.store.base.readout_layout`, padded to its row shape; each SAE's of
    ``saes``, :func:`~llmri.store.saes.sae_layout`; each of the ``probes`` named)."""
    t = frame.token
    m = min(k, len(t.top_ids))
    top_ids = np.full(k, -1, np.int64)
    top_probs = np.full(k, np.nan, np.float32)
    top_texts = [""] * k
    top_ids[:m] = t.top_ids[:m]
    top_probs[:m] = t.top_probs[:m]
    top_texts[: min(m, len(t.top_texts))] = list(t.top_texts[:m])
    rows: dict[str, Any] = {
        "tokens/ids": t.id,
        "tokens/text": t.text,
        "tokens/role": t.role,
        "tokens/logprob": t.logprob,
        "tokens/entropy": t.entropy,
        "tokens/top_ids": top_ids,
        "tokens/top_probs": top_probs,
        "tokens/top_texts": top_texts,
    }
    for s in signals:
        rows[f"frames/{s}"] = frame.tiles[s]
        rows[f"stats/{s}/norm"] = frame.norms[s]
        rows[f"stats/{s}/sparsity"] = frame.sparsity[s]
    for kind, fields in (readouts or {}).items():
        row = getattr(frame, kind)
        for name, (shape, _) in fields.items():
            dtype = READOUT_DTYPES[name]
            value = np.asarray(getattr(row, name), dtype=object if dtype is str else None)
            if value.shape != shape:
                padded = np.full(shape, fill_value(dtype), dtype=object if dtype is str else dtype)
                fit_into(padded, value)
                value = padded
            rows[f"{kind}/{name}"] = value
    if saes:
        rows.update(sae_rows(frame, saes))
    if probes:
        rows.update(probe_rows(frame, probes))
    return rows


def stack_rows(rows: list[Any], spec: ColumnSpec) -> np.ndarray:
    """``rows`` as one array ``[len(rows), *row_shape]`` (strings as an object array)."""
    if spec.dtype is str:
        out = np.empty((len(rows), *spec.row_shape), dtype=object)
        for i, r in enumerate(rows):
            out[i] = r
        return out
    if spec.dtype is np.uint16:  # bfloat16 tiles (float32 values in a Frame) as their bits
        return bfloat16_bits(np.asarray(rows, dtype=np.float32)).reshape(len(rows), *spec.row_shape)
    return np.asarray(rows, dtype=spec.dtype).reshape(len(rows), *spec.row_shape)


class Column:
    """How one array grows. Every commit writes whole chunks (the rows of the last, partial chunk are
    kept in memory and padded with the fill value), so no chunk is ever read back and each chunk
    file is replaced whole. The array's length grows ahead of the data (doubling), so most commits
    write no array metadata; the last one sets the exact length."""

    def __init__(self, spec: ColumnSpec, capacity: int = INITIAL_ROWS) -> None:
        self.spec = spec
        self.n = 0  # rows taken
        self.capacity = capacity  # the array's length in its metadata
        self.tail = stack_rows([], spec)

    def take(self, rows: list[Any]) -> tuple[int | None, int, np.ndarray]:
        """Take ``rows``: the new length if the array must grow (else None), the index of the first
        chunk to write, and the rows of the whole chunks to write from there (padded)."""
        chunk, row_shape = self.spec.chunk, self.spec.row_shape
        new = stack_rows(rows, self.spec)
        data = np.concatenate([self.tail, new]) if len(self.tail) else new
        start = self.n - len(self.tail)  # a chunk boundary
        n_new = self.n + len(new)
        end = start + -(-len(data) // chunk) * chunk
        grow = None
        if end > self.capacity:
            self.capacity = grow = max(end, 2 * self.capacity, 4 * chunk)
        padded = data
        if end > n_new:
            pad = np.full((end - n_new, *row_shape), fill_value(self.spec.dtype), dtype=data.dtype)
            padded = np.concatenate([data, pad])
        self.n = n_new
        keep = n_new % chunk
        self.tail = data[len(data) - keep :] if keep else data[:0]
        return grow, start // chunk, padded
