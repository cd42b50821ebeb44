"""The store's interfaces, side by side: FrameStore (many sessions), SessionWriter (appends one,
crash-consistently), SessionReader (reads one back); and the optional abilities, as Protocols.

Everything here depends on :mod:`llmri.frame` and :mod:`llmri._errors` only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from .._errors import StoreError
from ..frame import AttentionTable, Frame, LensTable, TokenTable
from .abilities import SupportsAdd, SupportsArrays, SupportsRefresh  # noqa: F401 - re-exported
from .layout import (  # noqa: F401 - re-exported: the format's names, read from base by older code
    ATTN_RANK,
    HEAD,
    LAYER,
    RANK,
    READOUTS,
    TILE_X,
    TILE_Y,
    TOKEN,
    RowLayout,
    readout_layout,
)

#: The version of docs/FORMAT.md this llmri writes a store and a session in.
FORMAT_VERSION = 1
#: The newest version this llmri reads. A session of bfloat16 frames is version 2 (docs/FORMAT.md,
#: "Frame dtypes"): its ``frames/*`` hold bit patterns that a version-1 reader would take for values.
READ_VERSION = 2


def session_format_version(meta: dict[str, Any]) -> int:
    """The format version of a session with this metadata: 2 for bfloat16 frames, else 1."""
    return 2 if meta.get("frame_dtype") == "bfloat16" else FORMAT_VERSION


#: A session's ``meta["status"]``.
STATUSES = ("recording", "complete", "interrupted")


def readout_problem(frame: Frame, layout: dict[str, dict[str, RowLayout]]) -> str:
    """What keeps ``frame`` from fitting a session whose readouts are ``layout``
    (:func:`readout_layout`), or ``""``: a missing readout, or a field larger than its row."""
    for kind, fields in layout.items():
        row = getattr(frame, kind, None)
        if row is None:
            return f"frame {frame.index} has no {kind} readout"
        for name, (shape, _) in fields.items():
            got = np.shape(getattr(row, name))
            if len(got) != len(shape) or any(a > b for a, b in zip(got, shape, strict=True)):
                return f"frame {frame.index}: {kind} {name} of shape {list(got)} does not fit {list(shape)}"
    return ""


def check_signal(signal: str, signals: list[str], where: str) -> None:
    """Raise StoreError (one line, naming ``where``) unless ``signal`` is one of ``signals``."""
    if signal not in signals:
        have = ", ".join(signals) or "none: chat-only session"
        raise StoreError(f"{where}: no signal {signal!r:.80} (this session has: {have})")


def norm_range(start: int | None, stop: int | None, n: int) -> tuple[int, int]:
    """``[start, stop)`` of ``n`` rows as Python slicing reads it, never reversed (``stop >= start``)."""
    s, e, _ = slice(start, stop).indices(n)
    return s, max(s, e)


#: What ``SessionReader.show()`` calls: llmri's package sets it to the notebook widget's ``show``
#: (imported when first called), so the store imports no outer room.
_SHOW: Callable[..., Any] | None = None


def set_show(show: Callable[..., Any]) -> None:
    """Set what :meth:`SessionReader.show` calls (``show(session, **kw)``)."""
    global _SHOW
    _SHOW = show


class SessionReader(ABC):
    """One recorded session: metadata, token table, and per-signal frames.

    ``meta`` is a JSON-serialisable dict (see docs/FORMAT.md for its keys). Frames are
    ``[tokens, layers, H, W]``, float16 or float32 (``meta["frame_dtype"]``: float32 for ``bfloat16`` and
    ``float32`` sessions, see docs/FORMAT.md); ``start``/``stop`` select a token range without loading
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

    @property
    def readouts(self) -> list[str]:
        """The readouts this session holds (``"lens"``, ``"attention"``), from its meta."""
        return list(readout_layout(self.meta))

    def readout_arrays(self, kind: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """``{field: array [stop - start, ...]}`` of readout ``kind`` (one this session holds);
        a reader that stores readouts overrides it."""
        raise StoreError(f"session {self.id}: this reader cannot read {kind}")

    def _readout_checked(self, kind: str, start: int | None, stop: int | None) -> dict[str, np.ndarray]:
        if kind not in self.readouts:
            flag = "lens=True" if kind == "lens" else "attention=True"
            raise StoreError(f"session {self.id} has no {kind} readout (capture with {flag})")
        s, e = norm_range(start, stop, len(self))
        return self.readout_arrays(kind, s, e)

    def lens(self, start: int | None = None, stop: int | None = None) -> LensTable:
        """The logit lens of positions ``start..stop`` (:class:`~llmri.frame.LensTable`: ``top_ids``,
        ``top_probs`` ``[T, L, k]``, ``next_prob``, ``next_rank``, ``entropy`` ``[T, L]``, ``layers``);
        raises StoreError for a session captured without ``lens=True``."""
        return LensTable(self.layers, **self._readout_checked("lens", start, stop))

    def attention(self, start: int | None = None, stop: int | None = None) -> AttentionTable:
        """Attention per head of positions ``start..stop`` (:class:`~llmri.frame.AttentionTable`:
        ``top_pos``, ``top_weight`` ``[T, L, H, k]``, ``entropy``, ``sink`` ``[T, L, H]``,
        ``layers``); raises StoreError for a session captured without ``attention=True``."""
        return AttentionTable(self.layers, **self._readout_checked("attention", start, stop))

    @property
    def saes(self) -> list[str]:
        """The names of the SAEs whose features this session holds (``saes=[...]``), from its meta."""
        from .saes import sae_names

        return sae_names(self.meta)

    def sae(self, name: str, start: int | None = None, stop: int | None = None) -> Any:
        """SAE ``name``'s features at positions ``start..stop`` (:class:`~llmri.store.saes.SAEFeatures`:
        ``ids`` int32 / ``values`` float16 ``[T, k]``, ``l0``, ``fvu``, ``cosine`` ``[T]``, its
        ``record`` and ``labels``); raises StoreError for an SAE the session does not hold."""
        from .saes import check_sae_name, features_of

        check_sae_name(self.meta, name, f"session {self.id}")
        s, e = norm_range(start, stop, len(self))
        return features_of(self.meta, name, self.sae_arrays(name, s, e), f"session {self.id}")

    def sae_arrays(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """``{field: array [stop - start, ...]}`` of SAE ``name`` (one this session holds); a reader
        that stores SAE features overrides it."""
        raise StoreError(f"session {self.id}: this reader cannot read SAE features")

    @property
    def probes(self) -> list[str]:
        """The names of the direction probes this session holds (``probes=[...]``), from its meta."""
        from .probes import probe_names

        return probe_names(self.meta)

    def probe(self, name: str, start: int | None = None, stop: int | None = None) -> Any:
        """Probe ``name`` at positions ``start..stop`` (:class:`~llmri.store.probes.ProbeTrace`: ``cosine``
        and ``projection`` float32 ``[T, L]``, its ``record``); StoreError for a probe the session lacks."""
        from .probes import check_probe_name, trace_of

        check_probe_name(self.meta, name, f"session {self.id}")
        s, e = norm_range(start, stop, len(self))
        return trace_of(self.meta, name, self.probe_arrays(name, s, e), f"session {self.id}")

    def probe_arrays(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """``{field: float32 [stop - start, L]}`` of probe ``name``; a reader that stores probes overrides it."""
        raise StoreError(f"session {self.id}: this reader cannot read probes")

    def markers(self) -> list[Any]:
        """Notable tokens of this session (:func:`llmri.readouts.markers`): a list of
        :class:`~llmri.readouts.Marker` (``kind``, ``token``, ``layer``, ``reason``) from what it
        holds; a session without lens or attention gets the markers its data allows."""
        from ..readouts.markers import markers  # the one readout a store offers; pure numpy

        return markers(self)

    def sparsity(self, signal: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        return self.stats(signal, start, stop)[1]

    def to_xarray(self) -> Any:
        """The session as an ``xarray.Dataset`` (needs ``pip install 'llmri[xarray]'``).

        Dimensions ``token``, ``layer``, ``tile_y``, ``tile_x``, ``rank`` (docs/FORMAT.md, "Axes");
        coordinates ``token`` (position), ``layer`` (the layer names), ``text`` and ``role`` (per
        token). Variables: per signal ``<signal>`` (tiles ``[token, layer, tile_y, tile_x]``),
        ``<signal>_norm`` and ``<signal>_sparsity`` (float32 ``[token, layer]``); the token table
        ``token_id``, ``logprob``, ``entropy`` ``[token]`` and ``top_ids``, ``top_probs``,
        ``top_texts`` ``[token, rank]`` (padded with -1, NaN, ``""``); where the session holds
        them, the lens ``lens_top_ids``, ``lens_top_probs`` ``[token, layer, rank]``,
        ``lens_next_prob``, ``lens_next_rank``, ``lens_entropy`` ``[token, layer]``, and attention
        ``attn_top_pos``, ``attn_top_weight`` ``[token, layer, head, attn_rank]``, ``attn_entropy``,
        ``attn_sink`` ``[token, layer, head]``; SAE features ``sae_<name>_<field>``; probes
        ``probe_<name>_cosine``, ``probe_<name>_projection`` ``[token, layer]``. ``attrs`` hold ``meta``.
        A reader that :class:`SupportsArrays` (a Zarr session) gives dask arrays over its chunks, read only when
        computed, so a session larger than memory opens at once (only the ``text`` and ``role`` coordinates are
        read: selections need them); others hold numpy arrays. Only committed rows appear.
        """
        from .dataset import session_dataset

        return session_dataset(self)

    def tokens_df(self) -> Any:
        """The token table as a ``pandas.DataFrame`` indexed by ``token``: ``id``, ``text``,
        ``role``, ``logprob``, ``entropy`` and ``top_ids``, ``top_probs``, ``top_texts`` (lists of
        the valid alternatives, most probable first). Needs ``pip install 'llmri[xarray]'``."""
        from .dataset import tokens_frame

        return tokens_frame(self)

    def show(self, **kw: Any) -> Any:
        """This session in the viewer, in a notebook's output (:func:`llmri.show`; keywords ``t``,
        ``height``); outside a notebook, one line saying to run ``llmri view STORE`` instead."""
        if _SHOW is None:
            raise StoreError("session.show() needs llmri's notebook widget: import llmri")
        return _SHOW(self, **kw)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.id} {self.status} {len(self)} tokens "
            f"signals={self.signals} tile={self.tile}>"
        )


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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.close("interrupted" if exc_type is not None else "complete")


class FrameStore(ABC):
    """A collection of sessions (a Zarr group on disk, or memory).

    ``sessions()`` lists readable sessions and never raises for one bad session: problems are
    collected in :attr:`problems` as one-line messages, so a viewer listing many sessions keeps
    working. Optional abilities are Protocols, checked with ``isinstance``: a store may
    :class:`SupportsAdd`, the readers it returns may :class:`SupportsRefresh`.
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

    def _chosen(self, sessions: Any) -> list[SessionReader]:
        if sessions is None:
            return [s for s in self.sessions() if len(s)]
        return [self.session(x) if isinstance(x, str) else x for x in sessions]

    def to_xarray(self, sessions: Any = None) -> Any:
        """Every session (or ``sessions``: ids or readers, one layout) as one lazy
        ``xarray.Dataset`` with a ``session`` axis first: the variables of
        :meth:`SessionReader.to_xarray` (dask over a Zarr store's chunks; nothing read until
        computed), each session's ``token`` axis padded to the longest session's with NaN (floats),
        -1 (ids) or ``""`` (``text``, ``role``: variables here), ``length`` the true lengths.
        Coordinates per session: ``status``, ``prompt_id`` and each key of a study's prompt
        metadata (:func:`llmri.capture_many`). Empty sessions are left out. Needs the ``xarray``
        extra. docs/storage.md has examples."""
        from .dataset import store_dataset

        return store_dataset(self._chosen(sessions), str(getattr(self, "url", "store")))

    def tokens_df(self, sessions: Any = None) -> Any:
        """Every session's token table (:meth:`SessionReader.tokens_df`) as one ``pandas.DataFrame``
        indexed by ``(session, token)``, with each session's ``status``, ``prompt_id`` and prompt
        metadata as columns."""
        from .dataset import store_tokens_frame

        return store_tokens_frame(self._chosen(sessions))

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
