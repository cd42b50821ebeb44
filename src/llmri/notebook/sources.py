"""What ``llmri.show(x)`` serves: sessions, stores, paths and running streams, as the viewer's stores.

Only what was given is served: a session goes into an in-memory store of its own (with the other
sessions given beside it), a store or path is served as itself, and a stream is run on a background
thread into an in-memory :class:`~llmri.store.Session` that the viewer follows as it grows.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import LlmriError, one_line
from ..capture.framestream import FrameStream
from ..store import FrameStore, MemoryFrameStore, Session, SessionReader


class NotebookError(LlmriError):
    """``show()`` was given something it cannot show, or runs where no notebook is."""


class StreamRunner:
    """Iterates ``stream`` on a daemon thread into a :class:`Session` held by ``store`` (the stream's
    own store, if it has one, gets its frames as usual). ``error`` is the one line that ended it."""

    def __init__(self, stream: FrameStream, store: MemoryFrameStore, on_end: Callable[[], None] | None = None) -> None:
        self.stream = stream
        self.store = store
        self.session: Session | None = None
        self.error = ""
        self.on_end = on_end
        self.done = threading.Event()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="llmri-show-stream", daemon=True)

    def start(self, timeout: float = 60) -> Session:
        """Start the capture; returns its session as soon as it exists (before its first frame)."""
        self.thread.start()
        self._started.wait(timeout)
        if self.session is None:
            raise NotebookError(self.error or "the stream did not start")
        return self.session

    def _begin(self, session: Session) -> None:
        self.store.add(session)
        self.session = session
        self._started.set()

    def _run(self) -> None:
        try:
            Session.collect(self.stream, on_start=self._begin)
        except LlmriError as exc:
            self.error = one_line(exc)
        except BaseException as exc:  # noqa: BLE001 - shown in the widget, the kernel goes on
            detail = one_line(exc)
            self.error = f"{type(exc).__name__}: {detail}" if detail != type(exc).__name__ else detail
        finally:
            self._started.set()
            self.done.set()
            if self.on_end is not None:
                self.on_end()

    def stop(self) -> None:
        self.stream.stop()


@dataclass
class Shown:
    """``stores``: label -> store, in the order the viewer numbers them (``s0``, ``s1``, ...);
    ``key``: the session to open first (``"s0/ID"``), or ``""`` for the viewer's own choice."""

    stores: dict[str, FrameStore | str]
    key: str = ""
    runners: list[StreamRunner] = field(default_factory=list)


def _is_path(x: Any) -> bool:
    return isinstance(x, str) or hasattr(x, "__fspath__")


def resolve(source: Any, session: str | None = None) -> Shown:
    """Turn ``show()``'s argument into stores. ``source``: a session, a store, a path or URL, a stream,
    or a list of them (or a ``{label: ...}`` mapping). ``session``: the id to open first."""
    if isinstance(source, Mapping):
        items = [(str(k), v) for k, v in source.items()]
    elif isinstance(source, (list, tuple)):
        items = [("", v) for v in source]
    else:
        items = [("", source)]
    if not items:
        raise NotebookError("show() needs a session, a store, a path or a stream")
    for _, x in items:  # every item checked before any stream starts
        if not isinstance(x, (SessionReader, FrameStream, FrameStore)) and not _is_path(x):
            raise NotebookError(
                f"show() cannot show a {type(x).__name__}: give a session, a store, a path or URL, or llmri.stream(...)"
            )
    shown = Shown({})
    loose: MemoryFrameStore | None = None
    first = ""

    def put(label: str, store: FrameStore | str) -> str:
        url = store if isinstance(store, str) else (store.url or "")
        base = label or url.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or "store"
        name, n = base, 2
        while name in shown.stores:
            name, n = f"{base} ({n})", n + 1
        shown.stores[name] = store
        return f"s{len(shown.stores) - 1}"

    for label, x in items:
        if isinstance(x, SessionReader):
            if loose is None or label:
                loose = MemoryFrameStore()
                sid = put(label or "sessions", loose)
            else:
                sid = f"s{list(shown.stores.values()).index(loose)}"
            loose.add(x)
            first = first or f"{sid}/{x.id}"
        elif isinstance(x, FrameStream):
            mem = MemoryFrameStore()
            sid = put(label or "stream", mem)
            runner = StreamRunner(x, mem)
            shown.runners.append(runner)
            first = first or f"{sid}/{runner.start().id}"
        else:
            sid = put(label, x if isinstance(x, FrameStore) else os.fspath(x))
            if session and not first:
                first = f"{sid}/{session}"
    shown.key = first
    return shown


def outside_message(source: Any) -> str:
    """The one line ``show()`` prints where no notebook is: what to run instead."""
    if _is_path(source):
        where = os.fspath(source)
    elif isinstance(source, FrameStore) and source.url and source.url != "memory":
        where = source.url
    else:
        where = ""
    how = (
        f"run `llmri view {where}`"
        if where
        else "capture into a store (llmri.capture(..., store='run.zarr')) and run `llmri view run.zarr`"
    )
    return f"llmri.show() draws the viewer in a Jupyter notebook (JupyterLab, Notebook 7, VS Code); here, {how}"
