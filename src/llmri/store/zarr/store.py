"""ZarrFrameStore: sessions in a Zarr v3 group on a local directory or any fsspec URL.

The layout is documented in ``docs/FORMAT.md`` precisely enough to read a session with plain
``zarr``. Crash consistency rests on two facts: every chunk and every ``zarr.json`` is replaced
whole (on a local store through a temporary file and a rename, as zarr-python >= 3.1.3 does), and a
session's commit point is one number, ``n_committed``, in the session group's ``zarr.json``,
written only after the chunks it covers. Readers never look past ``n_committed``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..._errors import StoreError
from ..base import FORMAT_VERSION, FrameStore, SessionWriter
from ..ids import prepare_meta
from .columns import check_format_version, check_meta
from .location import Location
from .reader import ZarrSession
from .writer import ZarrSessionWriter

#: fsspec protocols of object stores whose filesystems cache directory listings (fsspec's DirCache)
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def remote_options(url: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """fsspec options for ``url``: the caller's, plus ``use_listings_cache=False`` on an object
    store unless the caller chose. A cached listing never learns of a session another process
    created (s3fs invalidates it only for its own writes), and its ``exists`` answers from it."""
    out = dict(options or {})
    if url.split("://", 1)[0].lower() in OBJECT_STORES:
        out.setdefault("use_listings_cache", False)
    return out


class ZarrFrameStore(FrameStore):
    """Sessions in a Zarr v3 group: a local directory, ``file://`` or any fsspec URL (``memory://``, ``s3://``).

    ``create=True`` makes the store when the location is missing or an empty directory; an existing
    store is opened (and appended to) either way. Opening something that is not an llmri store, or
    one written by a newer format version, raises :class:`~llmri.StoreError` naming the path.
    ``compress=True`` compresses the chunks of ``frames/*`` with zstd; by default they are stored
    raw, because the reduced float16 tiles are noise-like: zstd saved about 6% of their bytes while
    halving append throughput and doubling read latency (``benchmarks/store.py``,
    docs/benchmarks.md). The other arrays are small and keep zarr's default (zstd).
    ``background=False`` makes writers commit on the appending thread (see :class:`ZarrSessionWriter`).
    On a local directory no symbolic link below the store's (resolved) root is followed: a session
    holding one is reported in :attr:`problems`, not opened (docs/FORMAT.md, "Symbolic links").
    ``storage_options`` go to fsspec for a URL (``s3://``: ``endpoint_url``, ``key``, ``secret``...;
    without them s3fs reads the usual ``AWS_*`` environment variables, ``AWS_ENDPOINT_URL``
    included). An object store's directory listings are never cached (:func:`remote_options`), so
    sessions other processes create are listed as they appear (docs/storage.md).
    """

    def __init__(
        self,
        path_or_url: str,
        *,
        create: bool = False,
        compress: bool = False,
        background: bool = True,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from zarr.storage import FsspecStore

        from .nofollow import NoFollowLocalStore

        self.url = str(path_or_url)
        self._compress = compress
        self._background = background
        self._walked: dict[str, tuple[int, int, int]] = {}  # session id -> its zarr.json when found clean
        local: str | None = None
        if "://" not in self.url:
            local = self.url
        elif self.url.startswith("file://"):
            local = self.url[len("file://") :]
        try:
            if local is not None:
                # resolved once: the store's own path may be a link; nothing below it is followed
                local = os.path.realpath(os.path.expanduser(local))
                if os.path.isfile(local):
                    raise StoreError(f"{self.url}: not an llmri store (a file, not a directory)")
                if not os.path.exists(local) and not create:
                    raise StoreError(f"{self.url}: no such store")
                zstore: Any = NoFollowLocalStore(local)
            else:
                zstore = FsspecStore.from_url(self.url, storage_options=remote_options(self.url, storage_options))
            self._loc = Location(self.url, zstore)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{self.url}: cannot open store: {exc}") from exc
        self._open_or_create(create, local)

    def _open_or_create(self, create: bool, local: str | None) -> None:
        import zarr

        if not self._exists("zarr.json"):
            if local is not None and os.path.isdir(local) and os.listdir(local):
                raise StoreError(f"{self.url}: not an llmri store (a directory without zarr.json)")
            if not create:
                raise StoreError(f"{self.url}: no such store")
            try:
                if local is not None:
                    self._create_local(local)
                else:
                    self._create_remote()
            except StoreError:
                raise
            except Exception as exc:
                raise StoreError(f"{self.url}: cannot create store: {exc}") from exc
            if local is None:
                return
        attrs = self._loc.read_group_attrs("zarr.json", self.url)
        llm = attrs.get("llmri")
        if isinstance(llm, dict) and llm.get("kind") == "session":
            raise StoreError(f"{self.url}: this is one session of a store: open the store two levels up")
        if not isinstance(llm, dict) or llm.get("kind") != "store":
            raise StoreError(f"{self.url}: not an llmri store (a Zarr group without llmri attributes)")
        check_format_version(llm, self.url, "store metadata")
        if not self._exists("sessions/zarr.json"):
            zarr.open_group(self._loc.zstore, path="sessions", mode="a")

    @staticmethod
    def _init_root(zstore: Any) -> None:
        import zarr

        root = zarr.open_group(
            zstore, mode="w-", attributes={"llmri": {"kind": "store", "format_version": FORMAT_VERSION}}
        )
        root.create_group("sessions")

    def _create_remote(self) -> None:
        """Make the store where there is no rename: ``sessions/`` first, then the root's
        ``zarr.json`` claimed exclusively, so the store appears whole, and any number of processes
        creating it at once all open the one store (the losers' writes are the same bytes)."""
        from .internals import group_document

        self._loc.put([("sessions/zarr.json", group_document({}))], set())
        root = {"llmri": {"kind": "store", "format_version": FORMAT_VERSION}}
        self._loc.claim("zarr.json", group_document(root), set())

    def _create_local(self, local: str) -> None:
        """Build the new store in a sibling directory and rename it into place, so a crash never
        leaves a half-made store, and two processes creating the same store both end up with one."""
        import shutil
        import tempfile

        from zarr.storage import LocalStore

        from .nofollow import NoFollowLocalStore

        parent = os.path.dirname(os.path.abspath(local))
        if not os.path.isdir(parent):
            raise StoreError(f"{self.url}: no such directory {parent}")
        tmp = tempfile.mkdtemp(prefix=os.path.basename(local) + ".tmp-", dir=parent)
        try:
            self._init_root(LocalStore(tmp))
            try:
                os.rename(tmp, local)  # replaces an empty directory; fails if someone else got there first
            except OSError:
                if not os.path.exists(os.path.join(local, "zarr.json")):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._loc = Location(self.url, NoFollowLocalStore(local))

    @property
    def location(self) -> Location:
        """Where the store's files are: its zarr Store, and how llmri reads and writes them."""
        return self._loc

    def _exists(self, key: str) -> bool:
        return self._loc.exists(key)

    # -- FrameStore ---------------------------------------------------------------------
    def create_session(self, meta: dict[str, Any], reducer_state: dict[str, np.ndarray] | None = None) -> SessionWriter:
        meta = prepare_meta(meta)
        problem = check_meta(meta)
        if problem:
            raise StoreError(f"{self.url}: bad session metadata ({problem})")
        return ZarrSessionWriter(
            self._loc, meta, reducer_state or {}, compress=self._compress, background=self._background
        )

    def session_ids(self) -> list[str]:
        try:
            found = self._loc.list_dir("sessions")
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StoreError(f"{self.url}: cannot list sessions: {exc}") from exc
        return sorted(x.rstrip("/") for x in found if x.rstrip("/") != "zarr.json")

    def session(self, session_id: str) -> ZarrSession:
        if not session_id or "/" in session_id or session_id in (".", ".."):
            raise StoreError(f"{self.url}: bad session id {session_id!r}")
        root = self._loc.local_root
        if root is not None:
            self._refuse_links(root, session_id)
        if not self._exists(f"sessions/{session_id}/zarr.json"):
            raise StoreError(f"{self.url}: no session {session_id!r}")
        return ZarrSession(self._loc, session_id)

    def _refuse_links(self, root: str, session_id: str) -> None:
        """Raise if the session's tree holds a symbolic link or a special file, so such a session is
        reported in ``problems`` rather than opened. The tree is walked again only once its
        ``zarr.json`` changed (every commit rewrites it): a walk costs 7-10 ms per 1,000 frames of
        three signals, and the viewer reopens every session each time it lists them. A link placed
        later is refused by the store's reads (:class:`~llmri.store.zarr.nofollow.NoFollowLocalStore`)."""
        from .nofollow import RefusedPath, find_refused, lstat_key

        key = f"sessions/{session_id}"
        try:
            st = lstat_key(root, f"{key}/zarr.json")
        except RefusedPath as exc:
            why: str | None = str(exc)
        else:
            seen = None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns)
            if seen is not None and self._walked.get(session_id) == seen:
                return
            why = find_refused(root, key)
            if why is None and seen is not None:
                self._walked[session_id] = seen
        if why:
            raise StoreError(f"{self.url}: session {session_id} not opened: {why} (a store's links are not followed)")

    def __repr__(self) -> str:
        return f"<ZarrFrameStore {self.url}>"
