"""MemoryFrameStore: sessions held in this process (tests, notebooks)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .._errors import StoreError
from ..frame import Frame
from ..session import Session, SessionReader
from .base import FrameStore, SessionWriter
from .ids import new_session_id, prepare_meta


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
    """Keeps :class:`~llmri.session.Session` objects in a dict; appends are visible at once."""

    def __init__(self) -> None:
        super().__init__()
        self.url = "memory"
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create_session(self, meta: dict[str, Any], reducer_state: dict[str, np.ndarray] | None = None) -> SessionWriter:
        meta = prepare_meta(meta)
        with self._lock:
            while meta["id"] in self._sessions:
                meta["id"] = new_session_id()
            s = Session(meta, reducer_state)
            self._sessions[s.id] = s
        return _MemoryWriter(s)

    def add(self, session: Session) -> None:
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
