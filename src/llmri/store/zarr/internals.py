"""Every use of zarr-python's non-public API, in one place behind one small interface.

The writer lays out its files itself: the bytes zarr would write, without zarr's per-call machinery
(~1.5 ms of CPU per column per commit through ``Array.__setitem__``, taken from the model's forward
on a small machine). What that needs and zarr offers only in its internals:

- :func:`run`: zarr's own event loop, to call a Store's async methods from synchronous code
  (``zarr.core.sync.sync``);
- :class:`ColumnFormat`: one column's metadata as zarr makes it, the key and bytes of each of its
  chunks, and its ``zarr.json`` for a given length (``ArrayV3Metadata.encode_chunk_key``,
  ``update_shape``, ``to_buffer_dict``; the codec classes' fields);
- :func:`group_document`: a group's ``zarr.json`` for given attributes (``GroupMetadata``);
- :func:`coordinate_files`: the files of a small array of strings, as zarr writes them;
- :func:`named_document`: an array's ``zarr.json`` with ``dimension_names`` added
  (``ArrayV3Metadata.from_dict``), for upgrading stores written without them;
- :func:`ensure_open`, :func:`ensure_open_sync`: the open hooks a Store subclass must honour
  (:class:`~llmri.store.zarr.nofollow.NoFollowLocalStore`).

``tests/store/test_zarr_store.py::test_fast_path_writes_what_zarr_writes`` writes the same rows through
this module and through plain zarr and compares every file, so a zarr upgrade that changes any of it
fails there first.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from ..layout import LAYER
from .columns import INITIAL_ROWS, ColumnSpec, fill_value, state_dimension_names, stored_attributes


def run(coro: Any) -> Any:
    """Run a zarr coroutine to its end on zarr's event loop (a Store may be bound to that loop)."""
    from zarr.core.sync import sync

    return sync(coro)


async def ensure_open(store: Any) -> None:
    """Open ``store`` if it is not yet (what zarr's own Store methods do first)."""
    if not store._is_open:
        await store._open()


def ensure_open_sync(store: Any) -> None:
    """:func:`ensure_open` for a LocalStore's synchronous methods."""
    store._ensure_open_sync()


def _prototype() -> Any:
    from zarr.buffer import default_buffer_prototype

    return default_buffer_prototype()


def group_document(attributes: dict[str, Any]) -> bytes:
    """The ``zarr.json`` zarr writes for a group with these (JSON-safe) attributes."""
    from zarr.core.group import GroupMetadata

    return bytes(GroupMetadata(attributes=attributes).to_buffer_dict(_prototype())["zarr.json"].to_bytes())


class ColumnFormat:
    """How zarr lays out one column of a session: its metadata (made by zarr itself, in memory, with
    room for :data:`~llmri.store.zarr.columns.INITIAL_ROWS` rows), the store key and the bytes of
    each whole chunk, and its ``zarr.json`` for a given length. Keys are relative to the array.

    :meth:`encode` knows the codec chains zarr gives our columns (``bytes`` little-endian or
    ``vlen-utf8``, then optionally ``zstd``: the numcodecs implementations that zarr's codecs wrap);
    for any other chain (:attr:`fast` is False) it lets zarr encode the chunk, which is slower and
    writes the same bytes.
    """

    def __init__(self, spec: ColumnSpec, compressors: Any) -> None:
        import zarr
        from zarr.storage import MemoryStore

        self.spec = spec
        self.compressors = compressors
        # building the metadata is most of what creating an array costs: made once per kind of column
        self.metadata: Any = zarr.create_array(
            MemoryStore(),
            shape=(INITIAL_ROWS, *spec.row_shape),
            chunks=(spec.chunk, *spec.row_shape),
            dtype=spec.dtype,
            fill_value=fill_value(spec.dtype),
            compressors=compressors,
            dimension_names=spec.dimension_names,
            attributes=stored_attributes(spec.dtype),
        ).metadata
        self._zero = (0,) * len(spec.row_shape)
        self._encode = _fast_encoder(self.metadata)

    @property
    def fast(self) -> bool:
        """Whether chunks are encoded here rather than by zarr."""
        return self._encode is not None

    def chunk_key(self, index: int) -> str:
        """The key of the chunk holding rows ``[index * chunk, (index + 1) * chunk)``."""
        return str(self.metadata.encode_chunk_key((index, *self._zero)))

    def encode(self, block: np.ndarray) -> bytes:
        """The bytes zarr stores for one whole chunk, ``block`` of shape ``[chunk, *row_shape]``."""
        if self._encode is None:
            return self.encode_with_zarr(block)
        return self._encode(block)

    def encode_with_zarr(self, block: np.ndarray) -> bytes:
        """:meth:`encode` done by zarr itself: ``block`` written into a one-chunk array in memory."""
        import zarr
        from zarr.storage import MemoryStore

        held: dict[str, Any] = {}
        one = (self.spec.chunk, *self.spec.row_shape)
        arr = zarr.create_array(
            MemoryStore(held),
            shape=one,
            chunks=one,
            dtype=self.spec.dtype,
            fill_value=fill_value(self.spec.dtype),
            compressors=self.compressors,
            config={"write_empty_chunks": True},
        )
        arr[...] = block
        return bytes(held[self.chunk_key(0)].to_bytes())

    def document(self, rows: int) -> bytes:
        """The column's ``zarr.json`` with length ``rows``: what ``Array.resize`` writes."""
        md = self.metadata.update_shape((rows, *self.spec.row_shape))
        return bytes(md.to_buffer_dict(_prototype())["zarr.json"].to_bytes())


@functools.lru_cache(maxsize=64)
def coordinate_files(values: tuple[str, ...], dim: str) -> tuple[tuple[str, bytes], ...]:
    """The files (``(key relative to the array, bytes)``, chunks first, ``zarr.json`` last) zarr
    writes for a one-chunk string array holding ``values`` along the axis ``dim``."""
    import zarr
    from zarr.storage import MemoryStore

    held: dict[str, Any] = {}
    arr = zarr.create_array(
        MemoryStore(held),
        shape=(len(values),),
        chunks=(len(values),),
        dtype=str,
        fill_value="",
        dimension_names=(dim,),
    )
    arr[...] = np.array(values, dtype=object)
    files = [(key, bytes(buf.to_bytes())) for key, buf in held.items()]
    return tuple(sorted(files, key=lambda f: f[0] == "zarr.json"))


def named_document(document: bytes, names: tuple[str, ...]) -> bytes:
    """``document`` (an array's ``zarr.json``) as zarr writes it with ``dimension_names`` ``names``;
    raises ValueError if it is not a Zarr v3 array of ``len(names)`` axes."""
    import dataclasses
    import json

    from zarr.core.metadata.v3 import ArrayV3Metadata

    doc = json.loads(document)
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
        raise ValueError("not a Zarr v3 array")
    md = ArrayV3Metadata.from_dict(doc)
    if len(md.shape) != len(names):
        raise ValueError(f"{len(md.shape)} axes, {len(names)} names")
    md = dataclasses.replace(md, dimension_names=tuple(names))
    return bytes(md.to_buffer_dict(_prototype())["zarr.json"].to_bytes())


@functools.cache
def column_format(spec: ColumnSpec, compressors: Any) -> ColumnFormat:
    """The (shared, immutable) :class:`ColumnFormat` of a kind of column."""
    return ColumnFormat(spec, compressors)


def _fast_encoder(metadata: Any) -> Callable[[np.ndarray], bytes] | None:
    """A function from one whole chunk to the bytes zarr stores for it, or None for a codec chain
    other than ``bytes`` (little-endian) / ``vlen-utf8``, then optionally ``zstd``."""
    from zarr.codecs import BytesCodec, VLenUTF8Codec, ZstdCodec

    codecs = list(getattr(metadata, "codecs", ()))
    if not codecs:
        return None
    first, rest = codecs[0], codecs[1:]
    raw: Callable[[np.ndarray], bytes]
    if isinstance(first, BytesCodec) and (first.endian is None or first.endian.value == "little"):
        little = metadata.dtype.to_native_dtype().newbyteorder("<")
        if little.kind not in "biuf":
            return None

        def raw(a: np.ndarray) -> bytes:
            return np.ascontiguousarray(a, dtype=little).tobytes()

    elif isinstance(first, VLenUTF8Codec):
        from numcodecs.vlen import VLenUTF8

        vlen = VLenUTF8()

        def raw(a: np.ndarray) -> bytes:
            return bytes(vlen.encode(np.asarray(a, dtype=object)))

    else:
        return None
    if not rest:
        return raw
    if len(rest) == 1 and isinstance(rest[0], ZstdCodec):
        from numcodecs.zstd import Zstd

        zstd = Zstd(level=rest[0].level, checksum=rest[0].checksum)
        return lambda a: bytes(zstd.encode(raw(a)))
    return None


def create_session_nodes(
    zstore: Any,
    path: str,
    attributes: dict[str, Any],
    columns: dict[str, ColumnFormat],
    state: dict[str, np.ndarray],
    coordinates: dict[str, tuple[str, ...]],
) -> None:
    """Create the columns (at their initial length), the coordinate arrays (``{path: values}``, see
    :func:`coordinate_files`) and the reducer's arrays (written whole) of the session group at
    ``path``, whose ``zarr.json`` (with ``attributes``) the caller has already written (claimed,
    see :meth:`~llmri.store.zarr.location.Location.claim`), in one trip to zarr's loop."""
    from zarr.core.group import AsyncGroup, GroupMetadata
    from zarr.storage import StorePath

    buffer = _prototype().buffer
    files = [
        (f"{path}/{name}/{key}", data)
        for name, values in coordinates.items()
        for key, data in coordinate_files(values, LAYER)
    ]

    async def create() -> None:
        group = AsyncGroup(metadata=GroupMetadata(attributes=attributes), store_path=StorePath(zstore, path))
        # all columns in one create_hierarchy (their documents written concurrently) from cached
        # metadata: creating them one by one cost ~5 ms each (85 ms a session), on the critical
        # path of every capture and live-chat turn
        async for _ in group.create_hierarchy({name: fmt.metadata for name, fmt in columns.items()}):
            pass
        # chunks before documents: an array appears only once its data is there
        for last in (False, True):
            batch = [(k, d) for k, d in files if k.endswith("/zarr.json") == last]
            await asyncio.gather(*(zstore.set(k, buffer.from_bytes(d)) for k, d in batch))
        if state:
            await group.require_group("reducer_state")

            async def save(key: str, value: np.ndarray) -> None:
                chunks: Any = tuple(max(1, d) for d in value.shape) if value.ndim else "auto"
                await group.create_array(
                    f"reducer_state/{key}",
                    data=value,
                    chunks=chunks,
                    dimension_names=state_dimension_names(key, value.ndim) or None,
                )

            await asyncio.gather(*(save(k, v) for k, v in state.items()))

    run(create())
