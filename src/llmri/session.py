"""Reading API shared by a fresh capture's Session and a session read back from a store."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import StoreError
from .frame import Frame, TokenTable

if TYPE_CHECKING:
    from .framestream import FrameStream

FORMAT_VERSION = 1
STATUSES = ("recording", "complete", "interrupted")


def _check_signal(signal: str, signals: list[str], where: str) -> None:
    if signal not in signals:
        have = ", ".join(signals) or "none: chat-only session"
        raise StoreError(f"{where}: no signal {signal!r} (this session has: {have})")


class SessionReader(ABC):
    """One recorded session: metadata, token table, and per-signal frames.

    ``meta`` is a JSON-serialisable dict (see docs/FORMAT.md for its keys). Frames are
    ``[tokens, layers, H, W]`` float16; ``start``/``stop`` select a token range without loading
    the rest of the session.
    """

    @property
    @abstractmethod
    def meta(self) -> dict[str, Any]: ...

    @abstractmethod
    def __len__(self) -> int:
        """Number of committed frames (token positions)."""

    @property
    @abstractmethod
    def tokens(self) -> TokenTable: ...

    @abstractmethod
    def frames(self, signal: str, start: int | None = None, stop: int | None = None) -> np.ndarray: ...

    @abstractmethod
    def stats(self, signal: str, start: int | None = None, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(norm, sparsity)``, each ``[tokens, layers]`` float32, of the unreduced vectors."""

    @property
    def reducer_state(self) -> dict[str, np.ndarray]:
        return {}

    # -- helpers built on the abstract methods ---------------------------------------------
    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "complete"))

    @property
    def signals(self) -> list[str]:
        return list(self.meta.get("signals", []))

    @property
    def layers(self) -> list[str]:
        return list(self.meta.get("layers", []))

    @property
    def tile(self) -> tuple[int, int]:
        h, w = self.meta.get("tile", (0, 0))
        return int(h), int(w)

    @property
    def chat_only(self) -> bool:
        return bool(self.meta.get("chat_only", False))

    @property
    def text(self) -> str:
        """The generated text (prompt tokens and special tokens such as EOS excluded)."""
        t = self.tokens
        special = set(self.meta.get("special_ids") or [])
        return "".join(
            x for x, r, i in zip(t.text, t.role, t.ids, strict=True) if r == "generated" and int(i) not in special
        )

    @property
    def prompt_text(self) -> str:
        t = self.tokens
        return "".join(x for x, r in zip(t.text, t.role, strict=True) if r == "prompt")

    def norms(self, signal: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        return self.stats(signal, start, stop)[0]

    def sparsity(self, signal: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        return self.stats(signal, start, stop)[1]

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.id} {self.status} {len(self)} tokens "
            f"signals={self.signals} tile={self.tile}>"
        )


def _norm_range(start: int | None, stop: int | None, n: int) -> tuple[int, int]:
    s, e, _ = slice(start, stop).indices(n)
    return s, max(s, e)


class Session(SessionReader):
    """An in-memory session: what :func:`llmri.capture` returns, and what MemoryFrameStore holds.

    Thread-safe for one writer and many readers: readers see only appended frames.
    """

    def __init__(self, meta: dict[str, Any], reducer_state: dict[str, np.ndarray] | None = None) -> None:
        self._meta = dict(meta)
        self._meta.setdefault("format_version", FORMAT_VERSION)
        self._meta.setdefault("status", "recording")
        self._state = dict(reducer_state or {})
        self._frames: list[Frame] = []
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], np.ndarray] = {}
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
                    dtype: type = np.float16
                else:
                    empty, dtype = (0, layers), np.float32
                arrs = [getattr(f, kind)[signal] for f in self._frames]
                self._cache[key] = np.stack(arrs).astype(dtype, copy=False) if arrs else np.zeros(empty, dtype)
            return self._cache[key]

    def frames(self, signal: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        _check_signal(signal, self.signals, f"session {self.id}")
        s, e = _norm_range(start, stop, len(self))
        return self._stacked("tiles", signal)[s:e]

    def stats(self, signal: str, start: int | None = None, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        _check_signal(signal, self.signals, f"session {self.id}")
        s, e = _norm_range(start, stop, len(self))
        return self._stacked("norms", signal)[s:e], self._stacked("sparsity", signal)[s:e]

    def frame(self, i: int) -> Frame:
        return self._frames[i]

    @classmethod
    def collect(cls, stream: FrameStream) -> Session:
        """Run ``stream`` to its end and return a Session holding its frames.

        The session starts from the stream's metadata and reducer state, keeps the stream's session
        id (or gets a fresh one without a store), and takes the stream's final metadata (stop
        reason, errors) when it ends. An exception marks the session ``interrupted`` before it
        propagates.
        """
        meta = dict(stream.meta)
        session = cls(meta, stream.reducer_state)
        if stream.session_id:
            session.update_meta(id=stream.session_id)
        else:
            from .store.ids import prepare_meta

            session.update_meta(**{k: v for k, v in prepare_meta(meta).items() if k not in meta})

        def finish(status: str) -> None:
            session.update_meta(**{k: v for k, v in stream.meta.items() if k != "id"})
            session.set_status(status)

        try:
            for frame in stream:
                session.append(frame)
        except BaseException:
            finish("interrupted")
            raise
        finish("complete")
        return session
