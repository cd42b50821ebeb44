"""In memory: :class:`Session` (what :func:`llmri.capture` returns) and :class:`MemoryFrameStore`
(sessions held in this process: tests, notebooks)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from .._errors import StoreError
from ..frame import FRAME_NUMPY, AttentionTable, Frame, LensTable, TokenTable, frame_dtype_of
from .base import (
    STATUSES,
    FrameStore,
    SessionReader,
    SessionWriter,
    check_signal,
    norm_range,
    readout_problem,
    session_format_version,
)
from .ids import new_session_id, prepare_meta
from .layout import readout_layout
from .probes import probe_names, probe_problem, stack_probe
from .saes import sae_layout, sae_problem, stack_features


class FrameSource(Protocol):
    """What :meth:`Session.collect` runs: frames in order, and the metadata to keep with them (a
    :class:`~llmri.FrameStream`)."""

    @property
    def meta(self) -> dict[str, Any]: ...

    @property
    def reducer_state(self) -> dict[str, np.ndarray]: ...

    @property
    def session_id(self) -> str | None: ...

    def __iter__(self) -> Iterator[Frame]: ...


class Session(SessionReader):
    """An in-memory session: what :func:`llmri.capture` returns, and what MemoryFrameStore holds.

    Thread-safe for one writer and many readers: readers see only appended frames.
    """

    def __init__(self, meta: dict[str, Any], reducer_state: dict[str, np.ndarray] | None = None) -> None:
        self._meta = dict(meta)
        self._meta.setdefault("format_version", session_format_version(self._meta))
        self._meta.setdefault("status", "recording")
        self._state = dict(reducer_state or {})
        self._frames: list[Frame] = []
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], Any] = {}
        self._table: TokenTable | None = None

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    @property
    def reducer_state(self) -> dict[str, np.ndarray]:
        return self._state

    def __len__(self) -> int:
        return len(self._frames)

    def append(self, frame: Frame) -> None:
        if frame.index != len(self._frames):
            raise StoreError(f"session {self.id}: frame {frame.index} appended at position {len(self._frames)}")
        problem = (
            readout_problem(frame, readout_layout(self._meta))
            or sae_problem(frame, sae_layout(self._meta))
            or probe_problem(frame, probe_names(self._meta), len(self.layers))
        )
        if problem:
            raise StoreError(f"session {self.id}: {problem}")
        with self._lock:
            self._frames.append(frame)
            self._cache.clear()
            self._table = None

    def set_status(self, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"bad status {status!r}")
        self._meta["status"] = status

    def update_meta(self, **kw: Any) -> None:
        self._meta.update(kw)

    @property
    def tokens(self) -> TokenTable:
        with self._lock:
            if self._table is None:
                self._table = TokenTable.from_tokens([f.token for f in self._frames])
            return self._table

    def _stacked(self, kind: str, signal: str) -> np.ndarray:
        with self._lock:
            key = (kind, signal)
            if key not in self._cache:
                layers = len(self.layers)
                h, w = self.tile
                if kind == "tiles":
                    empty: tuple[int, ...] = (0, layers, h, w)
                    dtype: type = FRAME_NUMPY[frame_dtype_of(self._meta)]
                else:
                    empty, dtype = (0, layers), np.float32
                arrs = [getattr(f, kind)[signal] for f in self._frames]
                self._cache[key] = np.stack(arrs).astype(dtype, copy=False) if arrs else np.zeros(empty, dtype)
            out: np.ndarray = self._cache[key]  # typed where the library returns Any
            return out

    def frames(self, signal: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        check_signal(signal, self.signals, f"session {self.id}")
        s, e = norm_range(start, stop, len(self))
        return self._stacked("tiles", signal)[s:e]

    def stats(self, signal: str, start: int | None = None, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        check_signal(signal, self.signals, f"session {self.id}")
        s, e = norm_range(start, stop, len(self))
        return self._stacked("norms", signal)[s:e], self._stacked("sparsity", signal)[s:e]

    def readout_arrays(self, kind: str, start: int, stop: int) -> dict[str, np.ndarray]:
        with self._lock:
            key = ("readout", kind)
            if key not in self._cache:
                shapes = {f: shape for f, (shape, _) in readout_layout(self._meta)[kind].items()}
                rows = [getattr(f, kind) for f in self._frames]
                if any(r is None for r in rows):
                    raise StoreError(f"session {self.id}: a frame has no {kind} readout")
                table = (LensTable if kind == "lens" else AttentionTable).from_rows(rows, self.layers, shapes)
                self._cache[key] = table.arrays()
            return {name: a[start:stop] for name, a in self._cache[key].items()}

    def sae_arrays(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        with self._lock:
            key = ("sae", name)
            if key not in self._cache:
                k = int(self._meta["sae"]["k"])
                rows = [(f.sae or {}).get(name) for f in self._frames]
                if any(r is None for r in rows):
                    raise StoreError(f"session {self.id}: a frame has no features of SAE {name}")
                self._cache[key] = stack_features([r for r in rows if r is not None], k)
            return {f: a[start:stop] for f, a in self._cache[key].items()}

    def probe_arrays(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        with self._lock:
            key = ("probe", name)
            if key not in self._cache:
                rows = [(f.probes or {}).get(name) for f in self._frames]
                if any(r is None for r in rows):
                    raise StoreError(f"session {self.id}: a frame has no row of probe {name}")
                self._cache[key] = stack_probe([r for r in rows if r is not None], len(self.layers))
            return {f: a[start:stop] for f, a in self._cache[key].items()}

    def frame(self, i: int) -> Frame:
        return self._frames[i]

    @classmethod
    def collect(cls, stream: FrameSource, on_start: Callable[[Session], None] | None = None) -> Session:
        """Run ``stream`` to its end and return a Session holding its frames.

        The session starts from the stream's metadata and reducer state, keeps the stream's session
        id (or gets a fresh one without a store), and takes the stream's final metadata (stop
        reason, errors) when it ends. An exception marks the session ``interrupted`` before it
        propagates. ``on_start(session)`` is called before the first frame (a viewer that follows
        the session while it grows: ``llmri.show(stream)``).
        """
        meta = dict(stream.meta)
        session = cls(meta, stream.reducer_state)
        if stream.session_id:
            session.update_meta(id=stream.session_id)
        else:
            session.update_meta(**{k: v for k, v in prepare_meta(meta).items() if k not in meta})

        def finish(status: str) -> None:
            session.update_meta(**{k: v for k, v in stream.meta.items() if k != "id"})
            session.set_status(status)

        try:
            if on_start is not None:
                on_start(session)
            for frame in stream:
                session.append(frame)
        except BaseException:
            finish("interrupted")
            raise
        finish("complete")
        return session


class _MemoryWriter(SessionWriter):
    def __init__(self, session: Session) -> None:
        self._s = session
        self._closed = False

    @property
    def id(self) -> str:
        return self._s.id

    @property
    def session(self) -> Session:
        return self._s

    def append(self, frame: Frame) -> None:
        if self._closed:
            raise StoreError(f"session {self.id} is closed")
        self._s.append(frame)

    def commit(self) -> None:
        pass

    def update_meta(self, **kw: Any) -> None:
        self._s.update_meta(**kw)

    def close(self, status: str = "complete") -> None:
        if not self._closed:
            self._s.set_status(status)
            self._closed = True


class MemoryFrameStore(FrameStore):
    """Keeps sessions in a dict (:class:`Session` objects, or any reader given to :meth:`add`);
    appends are visible at once."""

    def __init__(self) -> None:
        super().__init__()
        self.url = "memory"
        self._sessions: dict[str, SessionReader] = {}
        self._lock = threading.Lock()

    def create_session(self, meta: dict[str, Any], reducer_state: dict[str, np.ndarray] | None = None) -> SessionWriter:
        meta = prepare_meta(meta)
        with self._lock:
            while meta["id"] in self._sessions:
                meta["id"] = new_session_id()
            s = Session(meta, reducer_state)
            self._sessions[s.id] = s
        return _MemoryWriter(s)

    def add(self, session: SessionReader) -> None:
        """Put an existing in-memory session (e.g. one returned by ``llmri.capture``) in the store."""
        with self._lock:
            self._sessions[session.id] = session

    def session_ids(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def session(self, session_id: str) -> SessionReader:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise StoreError(f"{self.url}: no session {session_id!r}") from None
