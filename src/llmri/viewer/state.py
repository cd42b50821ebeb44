"""What a viewer app serves (:class:`ViewerState`, on ``app.state.llmri``) and how routes reach it."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._errors import LlmriError
from ..store import FrameStore, SessionReader, open_store
from .security import SecurityPolicy, valid_id

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("llmri.viewer")


class NotFound(LlmriError):
    """An id that names no store or session (answered with 404)."""


class BadRequest(LlmriError):
    """A parameter out of range (answered with 400)."""


class Conflict(LlmriError):
    """A request the viewer cannot serve in its present state: no model, the model busy (answered with 409)."""


@runtime_checkable
class LivePlugin(Protocol):
    """What ``create_app(live=...)`` takes (:class:`~llmri.viewer.live.LiveChat` is one)."""

    def attach(self, app: FastAPI, state: ViewerState) -> None:
        """Add the plug-in's routes to ``app``; called once, before the security middleware wraps it."""


@dataclass
class StoreEntry:
    """One store the viewer serves: its id (``s0``, ``s1``, ...), the label the user gave it, the store."""

    id: str
    label: str
    store: FrameStore

    def public(self, message: str) -> str:
        """``message`` with the store's location (as opened, absolute, resolved) replaced by its label."""
        url = self.store.url or ""
        roots = {url}
        if url and "://" not in url:
            roots |= {os.path.abspath(url), os.path.realpath(url)}
        paths = (r for r in roots if ("/" in r or os.sep in r) and r != self.label)  # not "memory"
        for root in sorted(paths, key=len, reverse=True):
            message = message.replace(root, self.label)
        return message

    def problems(self) -> list[str]:
        return [self.public(p) for p in self.store.problems]


@dataclass
class ViewerState:
    """What the app serves: its stores (by id), the security policy, the web client's files and the
    optional live plug-in."""

    stores: dict[str, StoreEntry]
    policy: SecurityPolicy
    live: LivePlugin | None = None
    poll_interval: float = 0.5
    #: ``{name: (bytes, content type)}``: every file the static route may serve, read once at start.
    static: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    _readers: dict[tuple[str, str], tuple[float, SessionReader]] = field(default_factory=dict)
    #: Computed per session and kept while it is unchanged (e.g. its markers), by (kind, store,
    #: session, committed length, status); bounded, oldest first out.
    derived: dict[tuple[str, str, str, int, str], Any] = field(default_factory=dict)
    #: Held while the viewer runs the live chat's model for a patched cell (routes/pairs.py); a live
    #: turn waits for it to be free (one user of the model at a time: interventions are its hooks).
    model_lock: threading.Lock = field(default_factory=threading.Lock)

    def store(self, store_id: str) -> StoreEntry:
        if not valid_id(store_id) or store_id not in self.stores:
            raise NotFound("no such store")
        return self.stores[store_id]

    def reader(self, store_id: str, session_id: str, fresh: bool = False) -> SessionReader:
        """Open (or reuse) a session reader; a recording session is reopened at most every poll interval."""
        entry = self.store(store_id)
        if not valid_id(session_id):
            raise NotFound("no such session")
        key = (store_id, session_id)
        now = time.monotonic()
        hit = self._readers.get(key)
        if hit is not None and not fresh:
            opened, r = hit
            if r.status != "recording" or now - opened < self.poll_interval:
                return r
        if session_id not in entry.store.session_ids():
            raise NotFound("no such session")
        try:
            r = entry.store.session(session_id)
        except LlmriError as exc:
            log.warning("store %s: session %s cannot be read: %s", entry.label, session_id, exc)
            raise NotFound(f"session {session_id} cannot be read (the viewer's log says why)") from None
        self._readers[key] = (now, r)
        return r


def state_of(app: Any) -> ViewerState:
    """The :class:`ViewerState` of an app built by :func:`~llmri.viewer.create_app`."""
    state: ViewerState = app.state.llmri
    return state


def _label(store: FrameStore) -> str:
    """A store given without a label is shown by its last path component (its url may be absolute)."""
    url = (store.url or "").rstrip("/\\")
    return url.replace("\\", "/").rsplit("/", 1)[-1] or "memory"


def store_entries(stores: Any) -> dict[str, StoreEntry]:
    """``{id: StoreEntry}`` for what :func:`~llmri.viewer.create_app` was given (see its ``stores``)."""
    if isinstance(stores, (FrameStore, str)) or hasattr(stores, "__fspath__"):
        stores = [stores]
    items: Iterable[tuple[str, Any]]
    if isinstance(stores, Mapping):
        items = [(str(k), v) for k, v in stores.items()]
    else:  # paths are labelled as given (relative stays relative), never resolved
        items = [(_label(s) if isinstance(s, FrameStore) else str(s), s) for s in stores]
    out: dict[str, StoreEntry] = {}
    for i, (label, s) in enumerate(items):
        store = s if isinstance(s, FrameStore) else open_store(s)
        out[f"s{i}"] = StoreEntry(f"s{i}", label, store)
    return out
