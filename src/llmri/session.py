"""Old home of the session classes, kept while modules still import them from here: the reader
interface is :class:`llmri.store.base.SessionReader`, the in-memory session
:class:`llmri.store.memory.Session`."""

from __future__ import annotations

from .store.base import FORMAT_VERSION, STATUSES, SessionReader
from .store.memory import Session

__all__ = ["FORMAT_VERSION", "STATUSES", "Session", "SessionReader"]
