"""Frame stores: where sessions live (Zarr v3 on disk or any fsspec URL; memory for tests)."""

from __future__ import annotations

import os
from typing import Any

from .abilities import SupportsAdd, SupportsArrays, SupportsRefresh
from .base import FrameStore, SessionReader, SessionWriter
from .memory import MemoryFrameStore, Session


def open_store(path: Any, *, create: bool = False, storage_options: dict[str, Any] | None = None) -> FrameStore:
    """Open a store: a FrameStore is returned as is; ``":memory:"`` gives a new MemoryFrameStore;
    anything else is a Zarr store path or fsspec URL (``create=True`` makes it if missing;
    ``storage_options`` go to fsspec, e.g. ``{"endpoint_url": ...}`` for ``s3://``)."""
    if isinstance(path, FrameStore):
        return path
    if path == ":memory:":
        return MemoryFrameStore()
    from .zarr import ZarrFrameStore

    url = os.fspath(path) if hasattr(path, "__fspath__") else str(path)
    return ZarrFrameStore(url, create=create, storage_options=storage_options)


__all__ = [
    "FrameStore",
    "MemoryFrameStore",
    "Session",
    "SessionReader",
    "SessionWriter",
    "SupportsAdd",
    "SupportsArrays",
    "SupportsRefresh",
    "open_store",
]
