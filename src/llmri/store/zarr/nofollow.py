"""A local directory store that never follows a symbolic link below its root.

A store may have been prepared by someone else (a copied directory, an unpacked archive); a link
inside it would make a reader return any file of this host as frames. So the root is resolved
once (a store whose own path is a link, ``run.zarr -> /data/run.zarr``, works) and below it
every read opens its path one component at a time relative to its parent's descriptor with
``O_NOFOLLOW``, so a link swapped in after a check is refused too. A link, or anything that is
neither a regular file nor a directory (a FIFO would block the reader), raises
:class:`RefusedPath`; its message names the key inside the store, never the link's target.

Writes walk the same way: :func:`write_file` makes and opens each folder relative to its parent
with ``O_NOFOLLOW``, then writes a new temporary file in the last one and renames it into place
there, so a link planted in the store (a folder swapped for a link to somewhere else) is refused,
not written through. Deletes check the path for links first.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import stat
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from .internals import ensure_open, ensure_open_sync

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
#: Opening relative to a directory descriptor (Linux, macOS, BSDs): a race-free walk.
_AT = bool(_NOFOLLOW and _DIRECTORY) and os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd


class RefusedPath(Exception):
    """A path of a local store that llmri does not read: a symbolic link, or not a regular file."""


def _parts(key: str) -> list[str]:
    parts = [p for p in key.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise RefusedPath(f"{key!r} is not a key inside the store")
    return parts


def _is_link(name: str, dir_fd: int | None) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_at(root: str, parts: list[str], *, make: bool = False, known: set[str] | None = None) -> int | None:
    """A read-only descriptor of ``root/<parts>`` opened without following any link; None if absent.
    ``make``: every part is a folder, made where missing (never None then); ``known`` holds the
    folder keys known to exist (no ``mkdir`` tried for them), and gets the ones opened."""
    fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for i, name in enumerate(parts):
            key = "/".join(parts[: i + 1])
            last = i == len(parts) - 1 and not make
            if make and (known is None or key not in known):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=fd)
            flags = os.O_RDONLY | _CLOEXEC | _NOFOLLOW | (_NONBLOCK if last else _DIRECTORY)
            try:
                nxt = os.open(name, flags, dir_fd=fd)
            except OSError as exc:
                # O_NOFOLLOW on a link fails with ELOOP (ENOTDIR with O_DIRECTORY): ask lstat which
                if _is_link(name, fd):
                    raise RefusedPath(f"{key} is a symbolic link") from None
                if not make and isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                    return None
                raise
            if known is not None:
                known.add(key)
            os.close(fd)
            fd = nxt
        out, fd = fd, -1
        return out
    finally:
        if fd >= 0:
            os.close(fd)


def _open_walk(root: str, parts: list[str]) -> int | None:
    """:func:`_open_at` where descriptors cannot be opened relative to a directory: lstat, then open."""
    path = root
    for i, name in enumerate(parts):
        path = os.path.join(path, name)
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(mode):
            raise RefusedPath(f"{'/'.join(parts[: i + 1])} is a symbolic link")
    try:
        return os.open(path, os.O_RDONLY | _CLOEXEC | _NOFOLLOW | _NONBLOCK | getattr(os, "O_BINARY", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None


def open_file(root: str, key: str) -> io.BufferedReader | None:
    """The file at ``root/key`` opened for reading without following links; None if absent or a directory."""
    parts = _parts(key)
    if not parts:
        return None
    fd = (_open_at if _AT else _open_walk)(root, parts)
    if fd is None:
        return None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            os.close(fd)
            return None
        if not stat.S_ISREG(mode):
            raise RefusedPath(f"{key} is not a regular file")
        if _NONBLOCK and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def _check_folders(root: str, parts: list[str]) -> None:
    """Where descriptors cannot be opened relative to a directory: make the folders, refusing links."""
    path = root
    for i, name in enumerate(parts):
        path = os.path.join(path, name)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
        if os.path.islink(path):
            raise RefusedPath(f"{'/'.join(parts[: i + 1])} is a symbolic link")


def write_file(root: str, key: str, data: Any, known: set[str] | None = None, *, exclusive: bool = False) -> None:
    """Write ``root/key`` whole and atomically (a new temporary file in its folder, then a rename,
    as zarr's LocalStore does), making its folders, following no link below ``root``: a link on
    the way raises :class:`RefusedPath`. ``exclusive``: raise ``FileExistsError`` if the file is
    there. ``known``: folder keys known to exist (see :func:`_open_at`)."""
    parts = _parts(key)
    if not parts:
        raise RefusedPath(f"{key!r} is not a key inside the store")
    name, tmp = parts[-1], f"{parts[-1]}.{uuid.uuid4().hex}.partial"
    if not _AT:
        _check_folders(root, parts[:-1])
        folder = os.path.join(root, *parts[:-1])
        _write_in(None, os.path.join(folder, tmp), os.path.join(folder, name), data, exclusive)
        return
    dfd = _open_at(root, parts[:-1], make=True, known=known)
    assert dfd is not None  # made
    try:
        _write_in(dfd, tmp, name, data, exclusive)
    finally:
        os.close(dfd)


def _write_in(dfd: int | None, tmp: str, name: str, data: Any, exclusive: bool) -> None:
    """Write ``tmp`` (a new file: a link of that name is refused) in the folder ``dfd``, then move
    it to ``name``. ``dfd`` None: ``tmp`` and ``name`` are whole paths (no folder descriptors)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666, dir_fd=dfd)
    try:
        with open(fd, "wb", closefd=True) as fh:
            fh.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    moved = False
    try:
        if exclusive and os.name == "nt":
            os.rename(tmp, name)  # fails if the name is taken
            moved = True
        elif exclusive:  # a hard link fails if the name is taken, and a link there is not followed
            os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        elif dfd is None:
            os.replace(tmp, name)
            moved = True
        else:  # POSIX rename replaces the name itself, never what a link of that name points at
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            moved = True
    finally:
        if not moved:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)


def _read(root: str, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None) -> Buffer | None:
    """zarr LocalStore's read of one key (whole or a byte range), through :func:`open_file`."""
    f = open_file(root, key)
    if f is None:
        return None
    with f:
        if byte_range is None:
            return prototype.buffer.from_bytes(f.read())
        size = f.seek(0, io.SEEK_END)
        if isinstance(byte_range, RangeByteRequest):
            f.seek(byte_range.start)
            return prototype.buffer.from_bytes(f.read(byte_range.end - f.tell()))
        if isinstance(byte_range, OffsetByteRequest):
            f.seek(byte_range.offset)
        elif isinstance(byte_range, SuffixByteRequest):
            f.seek(max(0, size - byte_range.suffix))
        else:
            raise TypeError(f"unexpected byte_range {byte_range!r}")
        return prototype.buffer.from_bytes(f.read())


def lstat_key(root: str, key: str) -> os.stat_result | None:
    """The lstat of ``root/key``, None if absent; raises :class:`RefusedPath` for a link on the way."""
    parts = _parts(key)
    path, st = root, None
    try:
        st = os.lstat(root)
        for i, name in enumerate(parts):
            path = os.path.join(path, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                raise RefusedPath(f"{'/'.join(parts[: i + 1])} is a symbolic link")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st


def find_refused(root: str, key: str) -> str | None:
    """Why a read of the tree at ``root/key`` would be refused (the first link or special file in
    it or on the way to it, named by its key), or None. One ``os.scandir`` per directory."""
    try:
        st = lstat_key(root, key)
    except RefusedPath as exc:
        return str(exc)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return None
    stack = [(os.path.join(root, key), key.strip("/"))]
    while stack:
        folder, prefix = stack.pop()
        try:
            it = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed meanwhile
        with it:
            for entry in it:
                rel = f"{prefix}/{entry.name}"
                if entry.is_symlink():
                    return f"{rel} is a symbolic link"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel))
                elif not entry.is_file(follow_symlinks=False):
                    return f"{rel} is not a regular file"
    return None


def _bytes_of(value: Buffer) -> Any:
    if not isinstance(value, Buffer):
        raise TypeError(f"LocalStore.set(): `value` must be a Buffer instance, not {type(value)}")
    return value.as_buffer_like()


class NoFollowLocalStore(LocalStore):
    """zarr's :class:`~zarr.storage.LocalStore` whose reads, writes, deletes, listings and ``exists``
    never follow a link below the (resolved) root: a link raises :class:`RefusedPath`."""

    def __init__(self, root: Any, *, read_only: bool = False) -> None:
        super().__init__(os.path.realpath(os.fspath(root)), read_only=read_only)

    @property
    def _root(self) -> str:
        return os.fspath(self.root)

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        ensure_open_sync(self)
        return _read(self._root, key, prototype or default_buffer_prototype(), byte_range)

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        await ensure_open(self)
        return await asyncio.to_thread(_read, self._root, key, prototype or default_buffer_prototype(), byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(
            await asyncio.gather(
                *(asyncio.to_thread(_read, self._root, key, prototype, byte_range) for key, byte_range in key_ranges)
            )
        )

    def set_sync(self, key: str, value: Buffer) -> None:
        ensure_open_sync(self)
        self._check_writable()
        write_file(self._root, key, _bytes_of(value))

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        # set() and set_if_not_exists() (which ignores FileExistsError) both come here
        await ensure_open(self)
        self._check_writable()
        await asyncio.to_thread(write_file, self._root, key, _bytes_of(value), None, exclusive=exclusive)

    def delete_sync(self, key: str) -> None:
        lstat_key(self._root, key)  # raises for a link on the way (or at the key)
        super().delete_sync(key)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(lstat_key, self._root, key)
        await super().delete(key)

    async def delete_dir(self, prefix: str) -> None:
        await asyncio.to_thread(lstat_key, self._root, prefix)
        await super().delete_dir(prefix)

    async def exists(self, key: str) -> bool:
        st = await asyncio.to_thread(lstat_key, self._root, key)
        return st is not None and stat.S_ISREG(st.st_mode)

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # names only: a link listed here is refused when it is read
        st = lstat_key(self._root, prefix)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        with os.scandir(os.path.join(self._root, prefix)) as it:
            names = [entry.name for entry in it]
        for name in names:
            yield name

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        st = lstat_key(self._root, prefix)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        base = os.path.join(self._root, prefix.strip("/"))
        for folder, _, files in os.walk(base):  # followlinks=False: a linked directory is not entered
            rel = os.path.relpath(folder, self._root).replace(os.sep, "/")
            for name in files:
                path = os.path.join(folder, name)
                if not os.path.islink(path) and os.path.isfile(path):
                    yield name if rel == "." else f"{rel}/{name}"

    async def list(self) -> AsyncIterator[str]:
        async for key in self.list_prefix(""):
            yield key
