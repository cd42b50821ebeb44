"""FrameStream: the one lifecycle of every source of frames (settings, meta, store, stop, iterate)."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Generator, Iterator, Sequence
from typing import Any

import numpy as np

from .. import __version__
from .._errors import CaptureError, LlmriError, one_line
from ..frame import TOP_K, Frame
from ..settings import GenerationSettings
from ..store.base import FrameStore, SessionWriter


class FrameStream(ABC):
    """An iterable of :class:`~llmri.frame.Frame`, one per token position, prompt first.

    A subclass checks its arguments and builds :attr:`meta` in its constructor (with
    :meth:`base_meta`), then calls :meth:`attach`; it produces frames in :meth:`_produce`. This
    class runs the rest, the same for every source: each frame is appended to the store's session
    (if any) before it is yielded; the stream can be iterated once; at the end the subclass's
    :meth:`_final_meta` is merged into :attr:`meta` and the session, and the session is closed
    ``complete`` (the answer ended, was stopped or hit a limit) or ``interrupted`` (an error, or
    the consumer stopped iterating).

    Attributes
    ----------
    settings : GenerationSettings
        How the answer is generated.
    meta : dict
        The session metadata (JSON-serialisable; see docs/FORMAT.md); final keys such as
        ``stop_reason`` are added when iteration ends.
    session_id : str or None
        The id of the session in ``store``, or ``None`` without a store.
    stop_reason : str
        ``""`` until the end; then ``eos``, ``max_new_tokens``, ``stop_string``, ``stopped``,
        ``closed`` or ``error: <one line>``.
    error : str or None
        The one-line message of the :class:`~llmri.LlmriError` that ended the stream, if one did.

    Notes
    -----
    :meth:`stop` is thread-safe: the subclass ends the answer soon after, keeping what was
    yielded. :meth:`close` (and leaving a ``with`` block) stops, and closes a session whose
    iteration never started as ``interrupted``. A subclass that holds resources (a worker thread, a
    connection) frees them in :meth:`_release`, which runs once whichever way the stream ends.
    """

    #: What the stream is called in its errors ("a capture stream can be iterated only once").
    what = "frame stream"

    def __init__(self, settings: GenerationSettings) -> None:
        self.settings = settings
        self.meta: dict[str, Any] = {}
        self.stop_reason = ""
        self.error: str | None = None
        self.writer: SessionWriter | None = None
        self.session_id: str | None = None
        self._stop_event = threading.Event()
        self._iterated = False

    # -- building ---------------------------------------------------------------------------
    #: :class:`~llmri.settings.GenerationSettings` from user values (``seed=None`` is 0); any bad value
    #: raises :class:`~llmri.CaptureError` with one line
    make_settings = staticmethod(GenerationSettings.checked)

    def base_meta(
        self,
        *,
        model: dict[str, Any],
        backend: str,
        prompt: Any,
        messages: list[dict[str, str]] | None,
        chat_only: bool,
        reducer: dict[str, Any] | None = None,
        signals: Sequence[str] = (),
        layers: Sequence[str] = (),
        tile: Sequence[int] = (0, 0),
        scales: dict[str, list[float]] | None = None,
        eos_ids: Collection[int] = (),
        special_ids: Collection[int] = (),
    ) -> dict[str, Any]:
        """The session metadata every stream writes (docs/FORMAT.md), from what only the subclass
        knows; ``prompt`` is kept when it is raw text, and ``chat`` is whether ``messages`` is given."""
        return {
            "llmri_version": __version__,
            "model": model,
            "backend": backend,
            "reducer": reducer,
            "signals": list(signals),
            "layers": list(layers),
            "tile": list(tile),
            "scales": dict(scales or {}),
            "generation": self.settings.to_dict(),
            "chat": messages is not None,
            "messages": messages,
            "prompt": prompt if isinstance(prompt, str) else None,
            "eos_ids": sorted(eos_ids),
            "special_ids": sorted(special_ids),
            "top_k": TOP_K,
            "entropy_unit": "nats",
            "chat_only": chat_only,
        }

    def attach(self, store: Any, meta: dict[str, Any] | None = None) -> None:
        """Merge the user's extra ``meta`` into :attr:`meta` and, with ``store`` (a path, URL or
        :class:`~llmri.store.FrameStore`), create the session frames will be appended to."""
        if meta:
            self.meta.update(meta)
        if store is None:
            return
        from ..store import open_store

        fs: FrameStore = store if isinstance(store, FrameStore) else open_store(store, create=True)
        self.writer = fs.create_session(self.meta, self.reducer_state)
        self.session_id = self.writer.id
        self.meta["id"] = self.session_id

    @property
    def reducer_state(self) -> dict[str, np.ndarray]:
        """The reducer's arrays, stored with the session (none for a stream without activations)."""
        return {}

    # -- what a subclass provides --------------------------------------------------------------
    @abstractmethod
    def _produce(self) -> Generator[Frame, None, None]:
        """Yield the frames in order and set :attr:`stop_reason` before returning. Code after a
        ``yield`` runs once the consumer has taken that frame; :meth:`stop` sets ``_stop_event``."""

    def _final_meta(self) -> dict[str, Any]:
        """The keys written to :attr:`meta` and the session when the stream ends."""
        return {"stop_reason": self.stop_reason}

    def _release(self) -> None:  # noqa: B027 - optional
        """Free what the stream holds (threads, connections); runs once, whichever way it ends."""

    # -- the lifecycle -----------------------------------------------------------------------
    def stop(self) -> None:
        """End the answer soon (thread-safe); the frames already yielded are kept."""
        self._stop_event.set()

    def close(self) -> None:
        """Stop; if iteration never started, close the session as ``interrupted``."""
        self.stop()
        if self._iterated:
            return
        self._iterated = True
        try:
            if self.writer is not None:
                self.writer.update_meta(stop_reason="closed")
                self.writer.close("interrupted")
        finally:
            self._release()

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        if self._iterated:
            raise CaptureError(f"a {self.what} can be iterated only once")
        self._iterated = True
        status = "interrupted"
        frames = self._produce()
        try:
            try:
                for frame in frames:
                    if self.writer is not None:
                        self.writer.append(frame)
                    yield frame
            finally:
                frames.close()  # the producer's own clean-up (hooks, threads) runs before the session closes
            status = "complete"
        except GeneratorExit:
            self.stop_reason = "closed"
            raise
        except LlmriError as exc:
            self.error = str(exc)
            self.stop_reason = f"error: {exc}"
            raise
        except BaseException as exc:
            detail = one_line(str(exc), 200)
            self.stop_reason = f"error: {type(exc).__name__}" + (f": {detail}" if detail else "")
            raise
        finally:
            try:
                self._release()
            finally:
                end = self._final_meta()
                self.meta.update(end)
                if self.writer is not None:
                    self.writer.update_meta(**end)
                    self.writer.close(status)
