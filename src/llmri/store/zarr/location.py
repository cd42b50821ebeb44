"""Where a store's files live: its zarr Store, how llmri reads its group documents, and how it
writes whole files (atomically on a local directory, following no link: :mod:`.nofollow`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..._errors import StoreError
from .internals import run


class Location:
    """One store's place: ``url`` (what messages name), ``zstore`` (the zarr Store), and
    ``local_root``, the directory of a local store (whose files the writer writes itself), else None."""

    def __init__(self, url: str, zstore: Any) -> None:
        from zarr.storage import LocalStore

        self.url = url
        self.zstore = zstore
        self.local_root = str(zstore.root) if isinstance(zstore, LocalStore) else None

    def exists(self, key: str) -> bool:
        try:
            return bool(run(self.zstore.exists(key)))
        except Exception as exc:
            raise StoreError(f"{self.url}: cannot read store: {exc}") from exc

    def list_dir(self, prefix: str) -> list[str]:
        """The names directly below ``prefix``; raises FileNotFoundError where the store does."""

        async def names() -> list[str]:
            return [x async for x in self.zstore.list_dir(prefix)]

        return list(run(names()))

    def list_prefix(self, prefix: str) -> list[str]:
        """Every key below ``prefix`` (recursively)."""

        async def keys() -> list[str]:
            return [x async for x in self.zstore.list_prefix(prefix)]

        return list(run(keys()))

    def read(self, key: str) -> bytes | None:
        """The bytes of ``key``, or None if it does not exist."""
        from zarr.buffer import default_buffer_prototype

        buf = run(self.zstore.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else bytes(buf.to_bytes())

    def read_group_attrs(self, key: str, where: str) -> dict[str, Any]:
        """Parse one group's ``zarr.json`` by hand so a corrupt file gives a clear error, not zarr's traceback."""
        from zarr.buffer import default_buffer_prototype

        try:
            buf = run(self.zstore.get(key, prototype=default_buffer_prototype()))
        except Exception as exc:
            raise StoreError(f"{where}: cannot read {key}: {exc}") from exc
        if buf is None:
            raise StoreError(f"{where}: missing {key}")
        try:
            doc = json.loads(buf.to_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise StoreError(f"{where}: corrupt metadata ({key} is not valid JSON: {exc})") from None
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
            raise StoreError(f"{where}: not a Zarr v3 node ({key})")
        if doc.get("node_type") != "group":
            raise StoreError(f"{where}: corrupt metadata ({key} is not a group)")
        attrs = doc.get("attributes", {})
        if not isinstance(attrs, dict):
            raise StoreError(f"{where}: corrupt metadata (attributes of {key} is not an object)")
        return attrs

    def claim(self, key: str, data: bytes, made: set[str]) -> bool:
        """Write ``key`` whole only if nothing is there: True if this call wrote it, False if it
        existed. Local: an exclusive create (:func:`.nofollow.write_file`); S3 and others whose
        fsspec filesystem can: an exclusive put (S3's ``If-None-Match: *``); any other store
        checks, then writes (not exclusive; said in docs/FORMAT.md)."""
        if self.local_root is not None:
            from . import nofollow

            try:
                nofollow.write_file(self.local_root, key, data, made, exclusive=True)
            except FileExistsError:
                return False
            return True
        fs, path = self.zstore.fs, f"{self.zstore.path}/{key}"

        async def create() -> bool:
            try:
                await fs._pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            except (TypeError, NotImplementedError):  # a filesystem without exclusive writes
                if await self.zstore.exists(key):
                    return False
                await fs._pipe_file(path, data)
            return True

        return bool(run(create()))

    def put(self, files: list[tuple[str, bytes]], made: set[str]) -> None:
        """Write whole files ``(key, bytes)``: on a local store right here, each atomically and
        following no link (:func:`.nofollow.write_file`; ``made``: folder keys known to exist);
        elsewhere through the store, concurrently. Returns once all are written."""
        if self.local_root is not None:
            from . import nofollow

            for key, data in files:
                nofollow.write_file(self.local_root, key, data, made)
        elif files:
            from zarr.buffer import default_buffer_prototype

            buffer = default_buffer_prototype().buffer

            async def put_all() -> None:
                await asyncio.gather(*(self.zstore.set(key, buffer.from_bytes(data)) for key, data in files))

            run(put_all())
