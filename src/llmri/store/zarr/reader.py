"""ZarrSession: one session read back from a Zarr store, only its committed rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._errors import StoreError
from ...frame import FRAME_NUMPY, TOP_K, TokenTable, frame_dtype_of, from_bfloat16_bits, readout_fill
from ..base import SessionReader, check_signal, norm_range
from ..layout import readout_layout
from ..probes import PROBE_FIELDS
from ..saes import sae_layout
from .columns import check_format_version, check_meta
from .liveness import effective_status
from .location import Location


class ZarrSession(SessionReader):
    """A session read back from a Zarr store (:class:`~llmri.store.zarr.ZarrFrameStore`).

    Opening reads only the session's ``zarr.json``; the token table loads on first use and a frame
    range reads only the chunks it covers. The view is a snapshot of the committed frames at open
    time; :meth:`refresh` picks up frames committed since (for a session still recording).
    """

    def __init__(self, location: Location, session_id: str) -> None:
        self._location = location
        self._sid = session_id
        self._path = f"sessions/{session_id}"
        self._where = f"{location.url}: session {session_id}"
        self._arrays: dict[str, Any] = {}
        self._table: TokenTable | None = None
        self._state: dict[str, np.ndarray] | None = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the session's metadata and committed length."""
        attrs = self._location.read_group_attrs(f"{self._path}/zarr.json", self._where)
        llm = attrs.get("llmri")
        if not isinstance(llm, dict) or llm.get("kind") != "session":
            raise StoreError(f"{self._where}: not an llmri session (no llmri attributes)")
        check_format_version(llm, self._where)
        meta, n = attrs.get("meta"), attrs.get("n_committed")
        if not isinstance(meta, dict):
            raise StoreError(f"{self._where}: corrupt metadata (no meta object)")
        if not isinstance(n, int) or n < 0:
            raise StoreError(f"{self._where}: corrupt metadata (n_committed {n!r})")
        problem = check_meta(meta)
        if problem:
            raise StoreError(f"{self._where}: corrupt metadata ({problem})")
        meta = dict(meta)
        meta["id"] = self._sid
        status, why = effective_status(meta)
        if status != meta.get("status"):
            meta["status"] = status
            meta["interrupted_reason"] = why
        if getattr(self, "_n", None) != n:
            self._table = None
            self._arrays = {}
        self._meta, self._n = meta, n

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    def __len__(self) -> int:
        return self._n

    def _array(self, name: str) -> Any:
        arr = self._arrays.get(name)
        if arr is None:
            import zarr

            try:
                arr = zarr.open_array(self._location.zstore, path=f"{self._path}/{name}", mode="r")
            except Exception as exc:
                raise StoreError(f"{self._where}: cannot open {name}: {exc}") from exc
            if arr.shape[0] < self._n:
                raise StoreError(f"{self._where}: corrupt: {name} holds {arr.shape[0]} rows, {self._n} committed")
            self._arrays[name] = arr
        return arr

    def array(self, name: str) -> Any:
        """The stored ``zarr.Array`` at ``name`` (e.g. ``frames/resid``), rows past ``len(self)``
        included: slice it to ``[:len(self)]`` (:class:`~llmri.store.abilities.SupportsArrays`)."""
        return self._array(name)

    def _read(self, name: str, start: int, stop: int, empty: tuple[int, ...], dtype: Any) -> np.ndarray:
        if stop <= start:
            return np.zeros((0, *empty), dtype=dtype)
        try:
            return np.asarray(self._array(name)[start:stop])
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{self._where}: cannot read {name}[{start}:{stop}]: {exc}") from exc

    def frames(self, signal: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        check_signal(signal, self.signals, self._where)
        s, e = norm_range(start, stop, self._n)
        h, w = self.tile
        dtype = frame_dtype_of(self._meta)
        out = self._read(f"frames/{signal}", s, e, (len(self.layers), h, w), FRAME_NUMPY[dtype])
        return from_bfloat16_bits(out) if dtype == "bfloat16" and out.dtype == np.uint16 else out

    def stats(self, signal: str, start: int | None = None, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        check_signal(signal, self.signals, self._where)
        s, e = norm_range(start, stop, self._n)
        shape = (len(self.layers),)
        return (
            self._read(f"stats/{signal}/norm", s, e, shape, np.float32),
            self._read(f"stats/{signal}/sparsity", s, e, shape, np.float32),
        )

    def readout_arrays(self, kind: str, start: int, stop: int) -> dict[str, np.ndarray]:
        fields = readout_layout(self._meta)[kind]
        return {
            name: self._read(f"{kind}/{name}", start, stop, shape, readout_fill(name)[0])
            for name, (shape, _) in fields.items()
        }

    def sae_arrays(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        return {
            f: self._read(f"sae/{name}/{f}", start, stop, shape, dtype)
            for f, (dtype, shape, _) in sae_layout(self._meta)[name].items()
        }

    def probe_arrays(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        shape = (len(self.layers),)
        return {f: self._read(f"probes/{name}/{f}", start, stop, shape, np.float32) for f in PROBE_FIELDS}

    @property
    def tokens(self) -> TokenTable:
        if self._table is None:
            n, k = self._n, int(self._meta.get("top_k", TOP_K))

            def col(name: str, shape: tuple[int, ...] = (), dtype: Any = np.float32) -> np.ndarray:
                return self._read(f"tokens/{name}", 0, n, shape, dtype)

            texts = col("top_texts", (k,), object)
            self._table = TokenTable(
                ids=col("ids", (), np.int64),
                text=[str(x) for x in col("text", (), object)],
                role=[str(x) for x in col("role", (), object)],
                logprob=col("logprob"),
                entropy=col("entropy"),
                top_ids=col("top_ids", (k,), np.int64).reshape(n, k),
                top_probs=col("top_probs", (k,)).reshape(n, k),
                top_texts=[
                    [str(t) for t, i in zip(row, ids, strict=True) if i >= 0]
                    for row, ids in zip(texts.reshape(n, k), col("top_ids", (k,), np.int64).reshape(n, k), strict=True)
                ],
            )
        return self._table

    @property
    def reducer_state(self) -> dict[str, np.ndarray]:
        if self._state is None:
            import zarr

            try:
                g = zarr.open_group(self._location.zstore, path=f"{self._path}/reducer_state", mode="r")
                self._state = {name: np.asarray(a[...]) for name, a in g.arrays()}
            except FileNotFoundError:
                self._state = {}
            except Exception as exc:
                raise StoreError(f"{self._where}: cannot read reducer state: {exc}") from exc
        return self._state
