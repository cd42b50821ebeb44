"""ZarrFrameStore: sessions in a Zarr v3 group on a local directory or any fsspec URL.

The layout is documented in ``docs/FORMAT.md`` precisely enough to read a session with plain
``zarr``. Crash consistency rests on two facts: zarr-python (>= 3.1.3) writes every chunk and
every ``zarr.json`` atomically on a local store (write to a temporary file, then rename), and a
session's commit point is one number, ``n_committed``, in the session group's ``zarr.json``,
written only after the chunks it covers. Readers never look past ``n_committed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
import uuid
import weakref
from typing import Any

import numpy as np

from .._errors import StoreError
from ..frame import TOP_K, Frame, TokenTable
from ..session import FORMAT_VERSION, STATUSES, SessionReader, _check_signal, _norm_range
from .base import FrameStore, SessionWriter
from .ids import new_session_id, prepare_meta

#: Frames per chunk along the token axis of ``frames/<signal>``.
FRAME_CHUNK = 16
#: Rows per chunk of the token table and the per-layer stats.
ROW_CHUNK = 256
#: A recording session whose writer runs on another host reads as interrupted once its
#: heartbeat (refreshed at every commit) is older than this many seconds.
STALE_SECONDS = 120.0
#: An idle writer still refreshes its heartbeat this often (seconds).
HEARTBEAT_SECONDS = 10.0


def _sync(coro: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coro)


async def _gather(coros: list[Any]) -> None:
    await asyncio.gather(*coros)


def _pid_start(pid: int) -> int | None:
    """The process start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    if start is not None:
        now = _pid_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused by another process
    return True


def writer_alive(writer: dict[str, Any] | None, now: float | None = None) -> tuple[bool, str]:
    """Whether the writer described by ``meta["writer"]`` may still be running, and why not."""
    if not isinstance(writer, dict):
        return False, "no writer recorded"
    now = time.time() if now is None else now
    host, pid = writer.get("host"), writer.get("pid")
    if host == socket.gethostname() and isinstance(pid, int):
        if _pid_alive(pid, writer.get("pid_start")):
            return True, ""
        return False, f"writer process {pid} on {host} is gone"
    beat = writer.get("heartbeat")
    if isinstance(beat, (int, float)) and now - beat <= STALE_SECONDS:
        return True, ""
    return False, f"writer on {host} sent no heartbeat for over {int(STALE_SECONDS)} s"


def effective_status(meta: dict[str, Any]) -> tuple[str, str]:
    """``(status, reason)``: ``recording`` with a dead writer reads as ``interrupted``."""
    status = str(meta.get("status", "complete"))
    if status != "recording":
        return status, ""
    alive, why = writer_alive(meta.get("writer"))
    return ("recording", "") if alive else ("interrupted", why)


# -- arrays of a session --------------------------------------------------------------------


def _array_specs(meta: dict[str, Any]) -> dict[str, tuple[Any, tuple[int, ...], int]]:
    """``{path: (dtype, row_shape, chunk_rows)}`` of the per-token arrays of a session."""
    n_layers = len(meta["layers"])
    h, w = (int(x) for x in meta["tile"])
    k = int(meta.get("top_k", TOP_K))
    specs: dict[str, tuple[Any, tuple[int, ...], int]] = {
        "tokens/ids": (np.int64, (), ROW_CHUNK),
        "tokens/text": (str, (), ROW_CHUNK),
        "tokens/role": (str, (), ROW_CHUNK),
        "tokens/logprob": (np.float32, (), ROW_CHUNK),
        "tokens/entropy": (np.float32, (), ROW_CHUNK),
        "tokens/top_ids": (np.int64, (k,), ROW_CHUNK),
        "tokens/top_probs": (np.float32, (k,), ROW_CHUNK),
        "tokens/top_texts": (str, (k,), ROW_CHUNK),
    }
    for s in meta["signals"]:
        specs[f"frames/{s}"] = (np.float16, (n_layers, h, w), FRAME_CHUNK)
        specs[f"stats/{s}/norm"] = (np.float32, (n_layers,), ROW_CHUNK)
        specs[f"stats/{s}/sparsity"] = (np.float32, (n_layers,), ROW_CHUNK)
    return specs


def _fill(dtype: Any) -> Any:
    if dtype is str:
        return ""
    if dtype is np.int64:
        return -1
    return np.nan


_METADATA: dict[tuple[Any, ...], Any] = {}


#: Rows a new array has room for before it first grows: a typical turn, so a session's first commits
#: write chunks only (growing 17 arrays cost ~12 ms of CPU in the first commit).
INITIAL_ROWS = 1024


def _column_metadata(dtype: Any, row_shape: tuple[int, ...], chunk: int, compressors: Any) -> Any:
    """The zarr metadata of a new column (no chunks yet, shape ``(INITIAL_ROWS, *row_shape)``),
    made once by zarr itself in memory and reused: building it is most of what creating an array costs."""
    key = (dtype, row_shape, chunk, compressors)
    if key not in _METADATA:
        import zarr
        from zarr.storage import MemoryStore

        arr = zarr.create_array(
            MemoryStore(),
            shape=(INITIAL_ROWS, *row_shape),
            chunks=(chunk, *row_shape),
            dtype=dtype,
            fill_value=_fill(dtype),
            compressors=compressors,
        )
        _METADATA[key] = arr.metadata
    return _METADATA[key]


def _chunk_encoder(metadata: Any) -> Any:
    """A function from one whole chunk (ndarray) to the bytes zarr stores for it, for the codec
    chains zarr gives our columns: ``bytes`` (little-endian) or ``vlen-utf8``, then optionally
    ``zstd`` (both zarr codecs wrap numcodecs, used here the same way). ``None`` for any other
    chain: that column is written through zarr."""
    from zarr.codecs import BytesCodec, VLenUTF8Codec, ZstdCodec

    codecs = list(getattr(metadata, "codecs", ()))
    if not codecs:
        return None
    first, rest = codecs[0], codecs[1:]
    raw: Any
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


def _frame_rows(frame: Frame, meta: dict[str, Any], k: int) -> dict[str, Any]:
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
    for s in meta["signals"]:
        rows[f"frames/{s}"] = frame.tiles[s]
        rows[f"stats/{s}/norm"] = frame.norms[s]
        rows[f"stats/{s}/sparsity"] = frame.sparsity[s]
    return rows


def _stack(rows: list[Any], dtype: Any, row_shape: tuple[int, ...]) -> np.ndarray:
    if dtype is str:
        out = np.empty((len(rows), *row_shape), dtype=object)
        for i, r in enumerate(rows):
            out[i] = r
        return out
    return np.asarray(rows, dtype=dtype).reshape(len(rows), *row_shape)


class _Column:
    """One growing array. Every commit writes whole chunks (the rows of the last, partial chunk are
    kept in memory and padded with the fill value), so no chunk is ever read back and each chunk
    file is replaced atomically. The array's shape grows ahead of the data (doubling), so most
    commits write no array metadata; the last commit sets the exact length."""

    def __init__(self, array: Any, dtype: Any, row_shape: tuple[int, ...], chunk: int) -> None:
        self.array = array  # a zarr AsyncArray
        self.encode = _chunk_encoder(array.metadata)
        self.dtype = dtype
        self.row_shape = row_shape
        self.chunk = chunk
        self.n = 0
        self.capacity = int(array.metadata.shape[0])
        self.tail = _stack([], dtype, row_shape)

    def plan(self, rows: list[Any]) -> tuple[tuple[int, ...] | None, int, np.ndarray]:
        """Take ``rows``: the new shape if the array must grow (else None), and the whole chunks to
        write (their first row, and the rows padded to a chunk multiple)."""
        new = _stack(rows, self.dtype, self.row_shape)
        data = np.concatenate([self.tail, new]) if len(self.tail) else new
        start = self.n - len(self.tail)  # a chunk boundary
        n_new = self.n + len(new)
        end = start + -(-len(data) // self.chunk) * self.chunk
        grow = None
        if end > self.capacity:
            self.capacity = max(end, 2 * self.capacity, 4 * self.chunk)
            grow = (self.capacity, *self.row_shape)
        padded = data
        if end > n_new:
            pad = np.full((end - n_new, *self.row_shape), _fill(self.dtype), dtype=data.dtype)
            padded = np.concatenate([data, pad])
        self.n = n_new
        keep = n_new % self.chunk
        self.tail = data[len(data) - keep :] if keep else data[:0]
        return grow, start, padded

    def encoded(self, start: int, padded: np.ndarray) -> list[tuple[str, bytes]]:
        """``(store key, bytes)`` of each whole chunk: the bytes zarr would store for it."""
        arr = self.array
        zero = (0,) * len(self.row_shape)
        return [
            (
                f"{arr.store_path.path}/{arr.metadata.encode_chunk_key(((start + j) // self.chunk, *zero))}",
                self.encode(padded[j : j + self.chunk]),
            )
            for j in range(0, len(padded), self.chunk)
        ]

    def trimmed(self) -> tuple[str, bytes]:
        """``(store key, bytes)`` of the array's ``zarr.json`` with its exact length."""
        from zarr.core.buffer import default_buffer_prototype

        md = self.array.metadata.update_shape((self.n, *self.row_shape))
        doc = md.to_buffer_dict(default_buffer_prototype())["zarr.json"]
        return f"{self.array.store_path.path}/zarr.json", doc.to_bytes()


def _write_file(root: str, key: str, data: bytes, made: set[str]) -> None:
    """Write ``root/key`` atomically, as zarr's LocalStore does (a temporary file, then a rename)."""
    path = os.path.join(root, key)
    folder = os.path.dirname(path)
    if folder not in made:
        os.makedirs(folder, exist_ok=True)
        made.add(folder)
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class ZarrSessionWriter(SessionWriter):
    """Appends frames to ``sessions/<id>`` of a :class:`ZarrFrameStore` (see docs/FORMAT.md).

    Commit order: chunks and array shapes first, then ``n_committed``, the status and the writer's
    heartbeat in the session group's ``zarr.json``. A commit is due when ``commit_every`` frames are
    pending or the oldest pending frame waited ``commit_seconds``; :meth:`commit` and :meth:`close`
    commit at once.

    With ``background=True`` (the default) due commits run on a daemon thread, so ``append``
    never waits for storage: while one commit runs the next frames queue up and go in the next
    one, which keeps the store ahead of any generation rate. The thread also refreshes the
    heartbeat every :data:`HEARTBEAT_SECONDS` while idle. A failed background write is raised
    (as :class:`~llmri.StoreError`) by the next ``append``, ``commit`` or ``close``.
    """

    def __init__(
        self,
        store: ZarrFrameStore,
        meta: dict[str, Any],
        reducer_state: dict[str, np.ndarray],
        *,
        background: bool = True,
    ) -> None:
        import zarr

        self._store = store
        self._meta = meta
        self._k = int(meta.get("top_k", TOP_K))
        self._path = f"sessions/{meta['id']}"
        self._pending: list[Frame] = []
        self._appended = 0
        self._committed = 0
        self._closed = False
        self._meta_dirty = False
        self._first_pending = 0.0
        self._last_write = time.monotonic()
        self._made: set[str] = set()  # folders known to exist (local stores)
        self._lock = threading.Lock()  # guards _pending, _meta and the counters
        self._write_lock = threading.Lock()  # one commit at a time, in order
        self._wake = threading.Event()
        self._stopping = False
        self._error: BaseException | None = None
        self._meta["writer"] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _pid_start(os.getpid()),
            "heartbeat": time.time(),
        }
        try:
            group = zarr.create_group(store._zstore, path=self._path, attributes=self._attrs())
            self._group = group
            specs = _array_specs(meta)
            state = {key: np.asarray(value) for key, value in (reducer_state or {}).items()}
            for key in state:
                if "/" in key or key in (".", ".."):
                    raise StoreError(f"{store.url}: bad reducer state name {key!r}")
            self._columns: dict[str, _Column] = {}
            nodes = {
                name: _column_metadata(dtype, row_shape, chunk, store._compressors(name))
                for name, (dtype, row_shape, chunk) in specs.items()
            }
            _sync(self._create_arrays(group._async_group, specs, nodes, state))
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{store.url}: cannot create session {meta['id']}: {exc}") from exc
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._run, args=(weakref.ref(self), self._wake), name=f"llmri-commit-{self.id}", daemon=True
            )
            self._thread.start()

    async def _create_arrays(
        self,
        group: Any,
        specs: dict[str, tuple[Any, tuple[int, ...], int]],
        nodes: dict[str, Any],
        state: dict[str, np.ndarray],
    ) -> None:
        # all columns in one create_hierarchy (their documents written concurrently) from cached
        # metadata: creating them one by one cost ~5 ms each (85 ms a session), on the critical
        # path of every capture and live-chat turn
        created = {name: node async for name, node in group.create_hierarchy(nodes)}
        # async arrays let one commit write every column concurrently, in one event-loop trip;
        # write_empty_chunks skips zarr's check of every chunk against the fill value (NaN), which
        # on float16 frames cost more CPU than the write itself
        self._columns = {
            name: _Column(created[name].with_config({"write_empty_chunks": True}), *spec)
            for name, spec in specs.items()
        }

        async def saved(key: str, value: np.ndarray) -> None:
            chunks: Any = tuple(max(1, d) for d in value.shape) if value.ndim else "auto"
            await group.create_array(f"reducer_state/{key}", data=value, chunks=chunks)

        if state:
            await group.require_group("reducer_state")
            await asyncio.gather(*(saved(k, v) for k, v in state.items()))

    def _attrs(self) -> dict[str, Any]:
        return {
            "llmri": {"kind": "session", "format_version": FORMAT_VERSION},
            "n_committed": self._committed,
            "meta": self._meta,
        }

    @property
    def id(self) -> str:
        return str(self._meta["id"])

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    @property
    def n_committed(self) -> int:
        return self._committed

    def _raise_error(self) -> None:
        if self._error is not None:
            raise StoreError(f"{self._store.url}: session {self.id}: write failed: {self._error}") from self._error

    def _due(self) -> bool:
        n = len(self._pending)
        return n >= self.commit_every or (n > 0 and time.monotonic() - self._first_pending >= self.commit_seconds)

    def append(self, frame: Frame) -> None:
        if self._closed:
            raise StoreError(f"{self._store.url}: session {self.id} is closed")
        self._raise_error()
        if frame.index != self._appended:
            raise StoreError(f"session {self.id}: frame {frame.index} appended at position {self._appended}")
        for s in self._meta["signals"]:
            if s not in frame.tiles:
                raise StoreError(f"session {self.id}: frame {frame.index} has no signal {s!r}")
        with self._lock:
            if not self._pending:
                self._first_pending = time.monotonic()
            self._pending.append(frame)
            self._appended += 1
            due = self._due()
        if due:
            if self._thread is None:
                self.commit()
            else:
                self._wake.set()

    @staticmethod
    def _run(ref: weakref.ref[ZarrSessionWriter], wake: threading.Event) -> None:
        # holds the writer only weakly between rounds, so a writer dropped without close() is
        # collected and its thread ends (the session then reads interrupted once the process exits)
        while True:
            w = ref()
            if w is None or w._stopping:
                return
            timeout = min(w.commit_seconds, HEARTBEAT_SECONDS) / 2
            del w
            wake.wait(timeout=timeout)
            wake.clear()
            w = ref()
            if w is None or w._stopping:
                return
            try:
                with w._lock:
                    due = w._due()
                if due or time.monotonic() - w._last_write >= HEARTBEAT_SECONDS:
                    w._commit_now(heartbeat=True)
            except BaseException as exc:  # noqa: BLE001 - reported by the next append/commit/close
                w._error = exc
                return
            del w

    def _commit_now(self, heartbeat: bool = False, final: bool = False) -> None:
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, []
                dirty, self._meta_dirty = self._meta_dirty, False
            if batch:
                rows = [_frame_rows(f, self._meta, self._k) for f in batch]
                self._write_rows({name: [r[name] for r in rows] for name in self._columns})
            if final:
                self._trim()
            if batch or dirty or heartbeat:
                with self._lock:
                    self._committed += len(batch)
                    self._meta["writer"]["heartbeat"] = time.time()
                    doc = json.loads(json.dumps(self._attrs(), allow_nan=False, default=_json_default))
                self._group.attrs.put(doc)
                self._last_write = time.monotonic()

    def _write_rows(self, rows: dict[str, list[Any]]) -> None:
        # Chunks are encoded here and written as whole files: the same bytes zarr's setitem would
        # write, without its per-call machinery (~1.5 ms of CPU per column per commit, taken from
        # the model's forward on a small machine).
        plans = [(col, *col.plan(rows[name])) for name, col in self._columns.items()]
        grows = [col.array.resize(grow) for col, grow, _, _ in plans if grow is not None]
        if grows:
            _sync(_gather(grows))
        writes = []
        files: list[tuple[str, bytes]] = []
        for col, _, start, padded in plans:
            if col.encode is None:
                writes.append(col.array.setitem(slice(start, start + len(padded)), padded))
            else:
                files += col.encoded(start, padded)
        if writes:
            _sync(_gather(writes))
        self._put(files)

    def _put(self, files: list[tuple[str, bytes]]) -> None:
        """Write whole files: on a local store right here, each atomically as zarr's LocalStore
        writes them; elsewhere through the store."""
        root = self._store._local_root
        if root is not None:
            for key, data in files:
                _write_file(root, key, data, self._made)
        elif files:
            from zarr.core.buffer import default_buffer_prototype

            buffer = default_buffer_prototype().buffer
            zstore = self._store._zstore
            _sync(_gather([zstore.set(key, buffer.from_bytes(data)) for key, data in files]))

    def _trim(self) -> None:
        # exact shapes for plain-zarr readers; rows past n_committed are never read anyway
        self._put([col.trimmed() for col in self._columns.values() if col.capacity != col.n])
        for col in self._columns.values():
            col.capacity = col.n

    def commit(self) -> None:
        self._raise_error()
        try:
            self._commit_now()
        except Exception as exc:
            self._error = exc
            raise StoreError(f"{self._store.url}: session {self.id}: write failed: {exc}") from exc

    def update_meta(self, **kw: Any) -> None:
        with self._lock:
            self._meta.update(kw)
            self._meta_dirty = True

    def close(self, status: str = "complete") -> None:
        if self._closed:
            return
        if status not in STATUSES:
            raise ValueError(f"bad status {status!r}")
        self._closed = True
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._meta["status"] = status
            self._meta_dirty = True
        try:
            self._commit_now(final=True)
        except Exception as exc:
            raise StoreError(f"{self._store.url}: session {self.id}: write failed: {exc}") from exc
        self._raise_error()


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class ZarrSession(SessionReader):
    """A session read back from a :class:`ZarrFrameStore`.

    Opening reads only the session's ``zarr.json``; the token table loads on first use and a frame
    range reads only the chunks it covers. The view is a snapshot of the committed frames at open
    time; :meth:`refresh` picks up frames committed since (for a session still recording).
    """

    def __init__(self, store: ZarrFrameStore, session_id: str) -> None:
        self._store = store
        self._sid = session_id
        self._path = f"sessions/{session_id}"
        self._where = f"{store.url}: session {session_id}"
        self._arrays: dict[str, Any] = {}
        self._table: TokenTable | None = None
        self._state: dict[str, np.ndarray] | None = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the session's metadata and committed length."""
        attrs = self._store._read_attrs(f"{self._path}/zarr.json", self._where)
        llm = attrs.get("llmri")
        if not isinstance(llm, dict) or llm.get("kind") != "session":
            raise StoreError(f"{self._where}: not an llmri session (no llmri attributes)")
        fv = llm.get("format_version")
        if not isinstance(fv, int):
            raise StoreError(f"{self._where}: corrupt metadata (format_version {fv!r})")
        if fv > FORMAT_VERSION:
            raise StoreError(
                f"{self._where}: written by a newer llmri (format {fv}; this llmri reads up to {FORMAT_VERSION}):"
                " upgrade llmri"
            )
        meta, n = attrs.get("meta"), attrs.get("n_committed")
        if not isinstance(meta, dict):
            raise StoreError(f"{self._where}: corrupt metadata (no meta object)")
        if not isinstance(n, int) or n < 0:
            raise StoreError(f"{self._where}: corrupt metadata (n_committed {n!r})")
        problem = _check_meta(meta)
        if problem:
            raise StoreError(f"{self._where}: corrupt metadata ({problem})")
        meta = dict(meta)
        meta["id"] = self._sid
        status, why = effective_status(meta)
        if status != meta.get("status"):
            meta["status"] = status
            meta["interrupted_reason"] = why
        if getattr(self, "_n", None) != n:
            self._table = None
            self._arrays = {}
        self._meta, self._n = meta, n

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    def __len__(self) -> int:
        return self._n

    def _array(self, name: str) -> Any:
        arr = self._arrays.get(name)
        if arr is None:
            import zarr

            try:
                arr = zarr.open_array(self._store._zstore, path=f"{self._path}/{name}", mode="r")
            except Exception as exc:
                raise StoreError(f"{self._where}: cannot open {name}: {exc}") from exc
            if arr.shape[0] < self._n:
                raise StoreError(f"{self._where}: corrupt: {name} holds {arr.shape[0]} rows, {self._n} committed")
            self._arrays[name] = arr
        return arr

    def _read(self, name: str, start: int, stop: int, empty: tuple[int, ...], dtype: Any) -> np.ndarray:
        if stop <= start:
            return np.zeros((0, *empty), dtype=dtype)
        try:
            return np.asarray(self._array(name)[start:stop])
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{self._where}: cannot read {name}[{start}:{stop}]: {exc}") from exc

    def frames(self, signal: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        _check_signal(signal, self.signals, self._where)
        s, e = _norm_range(start, stop, self._n)
        h, w = self.tile
        return self._read(f"frames/{signal}", s, e, (len(self.layers), h, w), np.float16)

    def stats(self, signal: str, start: int | None = None, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        _check_signal(signal, self.signals, self._where)
        s, e = _norm_range(start, stop, self._n)
        shape = (len(self.layers),)
        return (
            self._read(f"stats/{signal}/norm", s, e, shape, np.float32),
            self._read(f"stats/{signal}/sparsity", s, e, shape, np.float32),
        )

    @property
    def tokens(self) -> TokenTable:
        if self._table is None:
            n, k = self._n, int(self._meta.get("top_k", TOP_K))

            def col(name: str, shape: tuple[int, ...] = (), dtype: Any = np.float32) -> np.ndarray:
                return self._read(f"tokens/{name}", 0, n, shape, dtype)

            texts = col("top_texts", (k,), object)
            self._table = TokenTable(
                ids=col("ids", (), np.int64),
                text=[str(x) for x in col("text", (), object)],
                role=[str(x) for x in col("role", (), object)],
                logprob=col("logprob"),
                entropy=col("entropy"),
                top_ids=col("top_ids", (k,), np.int64).reshape(n, k),
                top_probs=col("top_probs", (k,)).reshape(n, k),
                top_texts=[
                    [str(t) for t, i in zip(row, ids, strict=True) if i >= 0]
                    for row, ids in zip(texts.reshape(n, k), col("top_ids", (k,), np.int64).reshape(n, k), strict=True)
                ],
            )
        return self._table

    @property
    def reducer_state(self) -> dict[str, np.ndarray]:
        if self._state is None:
            import zarr

            try:
                g = zarr.open_group(self._store._zstore, path=f"{self._path}/reducer_state", mode="r")
                self._state = {name: np.asarray(a[...]) for name, a in g.arrays()}
            except FileNotFoundError:
                self._state = {}
            except Exception as exc:
                raise StoreError(f"{self._where}: cannot read reducer state: {exc}") from exc
        return self._state


def _check_meta(meta: dict[str, Any]) -> str:
    sig = meta.get("signals")
    if not isinstance(sig, list) or not all(isinstance(s, str) for s in sig):
        return "signals must be a list of names"
    if not isinstance(meta.get("layers"), list):
        return "layers must be a list"
    tile = meta.get("tile")
    if not (isinstance(tile, list) and len(tile) == 2 and all(isinstance(x, int) for x in tile)):
        return f"tile must be [H, W], got {tile!r}"
    if meta.get("status") not in STATUSES:
        return f"unknown status {meta.get('status')!r}"
    return ""


class ZarrFrameStore(FrameStore):
    """Sessions in a Zarr v3 group: a local directory, ``file://`` or any fsspec URL (``memory://``, ``s3://``).

    ``create=True`` makes the store when the location is missing or an empty directory; an existing
    store is opened (and appended to) either way. Opening something that is not an llmri store, or
    one written by a newer format version, raises :class:`~llmri.StoreError` naming the path.
    ``compress=True`` compresses the chunks of ``frames/*`` with zstd; by default they are stored
    raw, because the reduced float16 tiles are noise-like: zstd saved about 6% of their bytes while
    halving append throughput and doubling read latency (``benchmarks/store.py``,
    docs/benchmarks.md). The other arrays are small and keep zarr's default (zstd).
    ``background=False`` makes writers commit on the appending thread (see :class:`ZarrSessionWriter`).
    On a local directory no symbolic link below the store's (resolved) root is followed: a session
    holding one is reported in :attr:`problems`, not opened (docs/FORMAT.md, "Symbolic links").
    """

    def __init__(
        self, path_or_url: str, *, create: bool = False, compress: bool = False, background: bool = True
    ) -> None:
        super().__init__()
        from zarr.storage import FsspecStore

        from ._local import NoFollowLocalStore

        self.url = str(path_or_url)
        self._compress = compress
        self._background = background
        self._zstore: Any = None
        self._walked: dict[str, tuple[int, int, int]] = {}  # session id -> its zarr.json when found clean
        local: str | None = None
        if "://" not in self.url:
            local = self.url
        elif self.url.startswith("file://"):
            local = self.url[len("file://") :]
        try:
            if local is not None:
                # resolved once: the store's own path may be a link; nothing below it is followed
                local = os.path.realpath(os.path.expanduser(local))
                if os.path.isfile(local):
                    raise StoreError(f"{self.url}: not an llmri store (a file, not a directory)")
                if not os.path.exists(local) and not create:
                    raise StoreError(f"{self.url}: no such store")
                self._zstore = NoFollowLocalStore(local)
            else:
                self._zstore = FsspecStore.from_url(self.url)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{self.url}: cannot open store: {exc}") from exc
        self._open_or_create(create, local)

    @property
    def _local_root(self) -> str | None:
        """The directory of a local store (whose chunks the writer writes itself), else None."""
        from zarr.storage import LocalStore

        return str(self._zstore.root) if isinstance(self._zstore, LocalStore) else None

    def _open_or_create(self, create: bool, local: str | None) -> None:
        import zarr

        if not self._exists("zarr.json"):
            if local is not None and os.path.isdir(local) and os.listdir(local):
                raise StoreError(f"{self.url}: not an llmri store (a directory without zarr.json)")
            if not create:
                raise StoreError(f"{self.url}: no such store")
            try:
                if local is not None:
                    self._create_local(local)
                else:
                    self._init_root(self._zstore)
            except StoreError:
                raise
            except Exception as exc:
                raise StoreError(f"{self.url}: cannot create store: {exc}") from exc
            if local is None:
                return
        attrs = self._read_attrs("zarr.json", self.url)
        llm = attrs.get("llmri")
        if isinstance(llm, dict) and llm.get("kind") == "session":
            raise StoreError(f"{self.url}: this is one session of a store: open the store two levels up")
        if not isinstance(llm, dict) or llm.get("kind") != "store":
            raise StoreError(f"{self.url}: not an llmri store (a Zarr group without llmri attributes)")
        fv = llm.get("format_version")
        if not isinstance(fv, int):
            raise StoreError(f"{self.url}: corrupt store metadata (format_version {fv!r})")
        if fv > FORMAT_VERSION:
            raise StoreError(
                f"{self.url}: written by a newer llmri (format {fv}; this llmri reads up to {FORMAT_VERSION}):"
                " upgrade llmri"
            )
        if not self._exists("sessions/zarr.json"):
            zarr.open_group(self._zstore, path="sessions", mode="a")

    @staticmethod
    def _init_root(zstore: Any) -> None:
        import zarr

        root = zarr.open_group(
            zstore, mode="w-", attributes={"llmri": {"kind": "store", "format_version": FORMAT_VERSION}}
        )
        root.create_group("sessions")

    def _create_local(self, local: str) -> None:
        """Build the new store in a sibling directory and rename it into place, so a crash never
        leaves a half-made store, and two processes creating the same store both end up with one."""
        import shutil
        import tempfile

        from zarr.storage import LocalStore

        from ._local import NoFollowLocalStore

        parent = os.path.dirname(os.path.abspath(local))
        if not os.path.isdir(parent):
            raise StoreError(f"{self.url}: no such directory {parent}")
        tmp = tempfile.mkdtemp(prefix=os.path.basename(local) + ".tmp-", dir=parent)
        try:
            self._init_root(LocalStore(tmp))
            try:
                os.rename(tmp, local)  # replaces an empty directory; fails if someone else got there first
            except OSError:
                if not os.path.exists(os.path.join(local, "zarr.json")):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._zstore = NoFollowLocalStore(local)

    def _exists(self, key: str) -> bool:
        try:
            return bool(_sync(self._zstore.exists(key)))
        except Exception as exc:
            raise StoreError(f"{self.url}: cannot read store: {exc}") from exc

    def _read_attrs(self, key: str, where: str) -> dict[str, Any]:
        """Parse one ``zarr.json`` by hand so a corrupt file gives a clear error, not zarr's traceback."""
        from zarr.core.buffer import default_buffer_prototype

        try:
            buf = _sync(self._zstore.get(key, prototype=default_buffer_prototype()))
        except Exception as exc:
            raise StoreError(f"{where}: cannot read {key}: {exc}") from exc
        if buf is None:
            raise StoreError(f"{where}: missing {key}")
        try:
            doc = json.loads(buf.to_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise StoreError(f"{where}: corrupt metadata ({key} is not valid JSON: {exc})") from None
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
            raise StoreError(f"{where}: not a Zarr v3 node ({key})")
        if doc.get("node_type") != "group":
            raise StoreError(f"{where}: corrupt metadata ({key} is not a group)")
        attrs = doc.get("attributes", {})
        if not isinstance(attrs, dict):
            raise StoreError(f"{where}: corrupt metadata (attributes of {key} is not an object)")
        return attrs

    def _compressors(self, name: str) -> Any:
        if name.startswith("frames/") and not self._compress:
            return None
        return "auto"

    # -- FrameStore ---------------------------------------------------------------------
    def create_session(self, meta: dict[str, Any], reducer_state: dict[str, np.ndarray] | None = None) -> SessionWriter:
        meta = prepare_meta(meta)
        problem = _check_meta(meta)
        if problem:
            raise StoreError(f"{self.url}: bad session metadata ({problem})")
        while self._exists(f"sessions/{meta['id']}/zarr.json"):
            meta["id"] = new_session_id()
        return ZarrSessionWriter(self, meta, reducer_state or {}, background=self._background)

    def session_ids(self) -> list[str]:
        async def names() -> list[str]:
            return [x async for x in self._zstore.list_dir("sessions")]

        try:
            found = _sync(names())
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StoreError(f"{self.url}: cannot list sessions: {exc}") from exc
        return sorted(x.rstrip("/") for x in found if x.rstrip("/") != "zarr.json")

    def session(self, session_id: str) -> ZarrSession:
        if not session_id or "/" in session_id or session_id in (".", ".."):
            raise StoreError(f"{self.url}: bad session id {session_id!r}")
        root = self._local_root
        if root is not None:
            self._refuse_links(root, session_id)
        if not self._exists(f"sessions/{session_id}/zarr.json"):
            raise StoreError(f"{self.url}: no session {session_id!r}")
        return ZarrSession(self, session_id)

    def _refuse_links(self, root: str, session_id: str) -> None:
        """Raise if the session's tree holds a symbolic link or a special file, so such a session is
        reported in ``problems`` rather than opened. The tree is walked again only once its
        ``zarr.json`` changed (every commit rewrites it): a walk costs 7-10 ms per 1,000 frames of
        three signals, and the viewer reopens every session each time it lists them. A link placed
        later is refused by the store's reads (:class:`~llmri.store._local.NoFollowLocalStore`)."""
        from ._local import RefusedPath, find_refused, lstat_key

        key = f"sessions/{session_id}"
        try:
            st = lstat_key(root, f"{key}/zarr.json")
        except RefusedPath as exc:
            why: str | None = str(exc)
        else:
            seen = None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns)
            if seen is not None and self._walked.get(session_id) == seen:
                return
            why = find_refused(root, key)
            if why is None and seen is not None:
                self._walked[session_id] = seen
        if why:
            raise StoreError(f"{self.url}: session {session_id} not opened: {why} (a store's links are not followed)")

    def __repr__(self) -> str:
        return f"<ZarrFrameStore {self.url}>"
