"""ZarrSessionWriter: appends frames to one session of a Zarr store, committing on a background thread."""

from __future__ import annotations

import json
import threading
import time
import weakref
from typing import Any

import numpy as np

from ..._errors import StoreError
from ..._jsonsafe import json_safe
from ...frame import TOP_K, Frame
from ..base import STATUSES, SessionWriter, readout_problem, session_format_version
from ..ids import new_session_id
from ..layout import readout_layout
from ..probes import probe_names, probe_problem
from ..saes import sae_layout, sae_problem
from .columns import Column, column_compressors, column_specs, coordinate_arrays, frame_rows
from .internals import ColumnFormat, column_format, create_session_nodes, group_document
from .liveness import this_writer
from .location import Location

#: An idle writer still refreshes its heartbeat this often (seconds).
HEARTBEAT_SECONDS = 10.0


class ZarrSessionWriter(SessionWriter):
    """Appends frames to ``sessions/<id>`` of a Zarr store (see docs/FORMAT.md).

    Commit order: array lengths and chunks first, then ``n_committed``, the status and the writer's
    heartbeat in the session group's ``zarr.json``. A commit is due when ``commit_every`` frames are
    pending or the oldest pending frame waited ``commit_seconds``; :meth:`commit` and :meth:`close`
    commit at once. Every file is written whole (:meth:`Location.put`), so a reader sees the old or
    the new version of each, and rows below ``n_committed`` are always intact.

    With ``background=True`` (the default) due commits run on a daemon thread, so ``append``
    never waits for storage: while one commit runs the next frames queue up and go in the next
    one, which keeps the store ahead of any generation rate. The thread also refreshes the
    heartbeat every :data:`HEARTBEAT_SECONDS` while idle. A failed background write is raised
    (as :class:`~llmri.StoreError`) by the next ``append``, ``commit`` or ``close``.
    """

    def __init__(
        self,
        location: Location,
        meta: dict[str, Any],
        reducer_state: dict[str, np.ndarray],
        *,
        compress: bool = False,
        background: bool = True,
    ) -> None:
        self._location = location
        self._meta = meta
        self._k = int(meta.get("top_k", TOP_K))
        self._path = f"sessions/{meta['id']}"
        self._readouts = readout_layout(meta)
        self._saes = sae_layout(meta)
        self._probes = probe_names(meta)
        self._pending: list[Frame] = []
        self._appended = 0
        self._committed = 0
        self._closed = False
        self._meta_dirty = False
        self._first_pending = 0.0
        self._last_write = time.monotonic()
        self._made: set[str] = set()  # folder keys known to exist (local stores)
        self._lock = threading.Lock()  # guards _pending, _meta and the counters
        self._write_lock = threading.Lock()  # one commit at a time, in order
        self._wake = threading.Event()
        self._stopping = False
        self._error: BaseException | None = None
        self._meta["writer"] = this_writer()
        try:
            state = {key: np.asarray(value) for key, value in (reducer_state or {}).items()}
            for key in state:
                if "/" in key or key in (".", ".."):
                    raise StoreError(f"{location.url}: bad reducer state name {key!r}")
            self._columns: dict[str, tuple[ColumnFormat, Column]] = {
                name: (column_format(spec, column_compressors(name, compress)), Column(spec))
                for name, spec in column_specs(meta).items()
            }
            formats = {name: fmt for name, (fmt, _) in self._columns.items()}
            # the session's zarr.json is claimed first, exclusively: a writer in another process that
            # drew the same id (or was given it) gets a new one instead of writing into this session
            while not location.claim(f"{self._path}/zarr.json", group_document(self._document()), self._made):
                self._meta["id"] = new_session_id()
                self._path = f"sessions/{self._meta['id']}"
            create_session_nodes(location.zstore, self._path, self._document(), formats, state, coordinate_arrays(meta))
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{location.url}: cannot create session {meta['id']}: {exc}") from exc
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._run, args=(weakref.ref(self), self._wake), name=f"llmri-commit-{self.id}", daemon=True
            )
            self._thread.start()

    def _document(self) -> dict[str, Any]:
        """The session group's attributes now: a JSON-safe copy (a NaN in ``meta`` is stored as null)."""
        doc = json_safe(
            {
                "llmri": {"kind": "session", "format_version": session_format_version(self._meta)},
                "n_committed": self._committed,
                "meta": self._meta,
            }
        )
        json.dumps(doc, allow_nan=False)  # refuses, naming its type, a value JSON cannot hold
        return doc  # type: ignore[no-any-return]  # the JSON document zarr read

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
            raise StoreError(f"{self._location.url}: session {self.id}: write failed: {self._error}") from self._error

    def _due(self) -> bool:
        n = len(self._pending)
        return n >= self.commit_every or (n > 0 and time.monotonic() - self._first_pending >= self.commit_seconds)

    def append(self, frame: Frame) -> None:
        if self._closed:
            raise StoreError(f"{self._location.url}: session {self.id} is closed")
        self._raise_error()
        if frame.index != self._appended:
            raise StoreError(f"session {self.id}: frame {frame.index} appended at position {self._appended}")
        for s in self._meta["signals"]:
            if s not in frame.tiles:
                raise StoreError(f"session {self.id}: frame {frame.index} has no signal {s!r}")
        problem = (
            readout_problem(frame, self._readouts)
            or sae_problem(frame, self._saes)
            or probe_problem(frame, self._probes, len(self._meta["layers"]))
        )
        if problem:
            raise StoreError(f"session {self.id}: {problem}")
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
                sig = self._meta["signals"]
                rows = [frame_rows(f, sig, self._k, self._readouts, self._saes, self._probes) for f in batch]
                self._write_rows({name: [r[name] for r in rows] for name in self._columns})
            if final:
                self._trim()
            if batch or dirty or heartbeat:
                with self._lock:
                    self._committed += len(batch)
                    self._meta["writer"]["heartbeat"] = time.time()
                    doc = self._document()
                # the commit point: written only once every chunk it covers is
                self._put([(f"{self._path}/zarr.json", group_document(doc))])
                self._last_write = time.monotonic()

    def _write_rows(self, rows: dict[str, list[Any]]) -> None:
        lengths: list[tuple[str, bytes]] = []
        chunks: list[tuple[str, bytes]] = []
        for name, (fmt, col) in self._columns.items():
            grow, first, padded = col.take(rows[name])
            if grow is not None:
                lengths.append((f"{self._path}/{name}/zarr.json", fmt.document(grow)))
            size = col.spec.chunk
            chunks += [
                (f"{self._path}/{name}/{fmt.chunk_key(first + j // size)}", fmt.encode(padded[j : j + size]))
                for j in range(0, len(padded), size)
            ]
        self._put(lengths)  # first, as zarr does: no chunk lies past its array's length
        self._put(chunks)

    def _put(self, files: list[tuple[str, bytes]]) -> None:
        self._location.put(files, self._made)

    def _trim(self) -> None:
        # exact lengths for plain-zarr readers; rows past n_committed are never read anyway
        self._put(
            [
                (f"{self._path}/{name}/zarr.json", fmt.document(col.n))
                for name, (fmt, col) in self._columns.items()
                if col.capacity != col.n
            ]
        )
        for _, col in self._columns.values():
            col.capacity = col.n

    def commit(self) -> None:
        self._raise_error()
        try:
            self._commit_now()
        except Exception as exc:
            self._error = exc
            raise StoreError(f"{self._location.url}: session {self.id}: write failed: {exc}") from exc

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
            raise StoreError(f"{self._location.url}: session {self.id}: write failed: {exc}") from exc
        self._raise_error()
