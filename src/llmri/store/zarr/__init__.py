"""The Zarr v3 store (docs/FORMAT.md): a local directory or any fsspec URL.

``store`` opens and creates stores, ``writer`` appends a session, ``reader`` reads one back,
``columns`` says what a session's arrays are, ``liveness`` whether a writer still runs,
``location`` where the files go, ``nofollow`` the local store that follows no link, and
``internals`` holds every use of zarr-python's non-public API.
"""

from __future__ import annotations

from .liveness import effective_status, writer_alive
from .reader import ZarrSession
from .store import ZarrFrameStore
from .writer import ZarrSessionWriter

__all__ = ["ZarrFrameStore", "ZarrSession", "ZarrSessionWriter", "effective_status", "writer_alive"]
