"""The optional abilities of a store and its readers, as Protocols: check them with ``isinstance()``
(:class:`~llmri.store.base.FrameStore` and :class:`~llmri.store.base.SessionReader` are the
interfaces every store has)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .base import SessionReader

# -- optional abilities: check with isinstance() ------------------------------------------------


@runtime_checkable
class SupportsRefresh(Protocol):
    """A session reader that is a snapshot and can catch up.

    ``refresh()`` re-reads the session's metadata and committed length, so a reader opened while
    the session records sees the frames committed since (a :class:`~llmri.store.zarr.ZarrSession`).
    A reader without it always shows every appended frame (an in-memory
    :class:`~llmri.store.memory.Session`).
    """

    def refresh(self) -> None: ...


@runtime_checkable
class SupportsArrays(Protocol):
    """A session reader whose columns are stored arrays that can be read lazily.

    ``array(name)`` returns the stored array at ``name`` (a path of docs/FORMAT.md's layout, e.g.
    ``frames/resid`` or ``tokens/ids``) as an array-like with ``shape``, ``dtype``, ``chunks`` and
    slicing that reads only the chunks a slice covers (a ``zarr.Array``). It may hold more rows than
    the reader's length (uncommitted ones): slice it to ``[:len(reader)]``. Used by
    :meth:`~llmri.store.base.SessionReader.to_xarray` to build dask arrays (a :class:`~llmri.store.zarr.ZarrSession`).
    """

    def array(self, name: str) -> Any: ...


@runtime_checkable
class SupportsAdd(Protocol):
    """A store that takes a finished session as it is.

    ``add(session)`` puts ``session`` (e.g. what :func:`llmri.capture` returned) in the store under
    its id, without copying its frames (a :class:`~llmri.store.memory.MemoryFrameStore`). Stores
    without it record sessions only through :meth:`~llmri.store.base.FrameStore.create_session`.
    """

    def add(self, session: SessionReader) -> None: ...
