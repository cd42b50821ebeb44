"""The FrameStore interface: many sessions, each appended frame by frame, crash-consistently."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..frame import Frame
from ..session import SessionReader


class SessionWriter(ABC):
    """Appends frames to one session of a store.

    Frames must arrive in order (``frame.index`` == number already appended). ``append`` may
    buffer; buffered frames are committed at least every ``commit_every`` frames or
    ``commit_seconds`` seconds, on :meth:`commit`, and on :meth:`close`. A reader never sees an
    uncommitted frame. ``close(status)`` commits and marks the session ``complete`` (default) or
    ``interrupted``; used as a context manager, an exception marks it ``interrupted``.
    """

    #: A count bound for bursts (a long prompt's prefill); during generation the time bound decides.
    #: Each commit costs the capture CPU time, so generation commits about once a second.
    commit_every: int = 256
    commit_seconds: float = 1.0

    @property
    @abstractmethod
    def id(self) -> str: ...

    @abstractmethod
    def append(self, frame: Frame) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def update_meta(self, **kw: Any) -> None:
        """Merge keys into the session metadata (written at the next commit)."""

    @abstractmethod
    def close(self, status: str = "complete") -> None: ...

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        self.close("interrupted" if exc_type is not None else "complete")


class FrameStore(ABC):
    """A collection of sessions (a Zarr group on disk, or memory).

    ``sessions()`` lists readable sessions and never raises for one bad session: problems are
    collected in :attr:`problems` as one-line messages, so a viewer listing many sessions keeps
    working.
    """

    url: str = ""

    def __init__(self) -> None:
        self.problems: list[str] = []

    @abstractmethod
    def create_session(self, meta: dict[str, Any], reducer_state: dict[str, np.ndarray] | None = None) -> SessionWriter:
        """Create a new session (``meta`` must contain at least ``signals``, ``layers``, ``tile``)."""

    @abstractmethod
    def session_ids(self) -> list[str]: ...

    @abstractmethod
    def session(self, session_id: str) -> SessionReader:
        """Open one session for reading; raises StoreError (one line) if missing or unreadable."""

    def sessions(self) -> list[SessionReader]:
        out: list[SessionReader] = []
        self.problems = []
        for sid in self.session_ids():
            try:
                out.append(self.session(sid))
            except Exception as exc:  # noqa: BLE001 - one bad session must not hide the others
                self.problems.append(str(exc))
        return out

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
