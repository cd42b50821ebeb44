"""Upgrading, in place, a store written before its arrays had names (docs/FORMAT.md, "Axes").

Each array's ``zarr.json`` gains ``dimension_names`` and the groups of each signal gain their
``layer`` coordinate, exactly as the writer now lays them out; nothing else changes, and llmri
reads a store the same before and after. Crash-safe: every file is replaced whole (atomically on a
local store), a coordinate array's ``zarr.json`` is written only after its chunk, and a stopped run
is finished by running it again (what already has names is left as it is). A session that is
recording is refused: its writer rewrites its arrays' documents (without names) as they grow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..._errors import StoreError
from ..layout import LAYER
from .columns import coordinate_arrays, dimension_names_for
from .internals import coordinate_files, named_document
from .location import Location
from .store import ZarrFrameStore


@dataclass
class UpgradeReport:
    """What :func:`upgrade_store` did: ``upgraded`` maps a session id to the files it wrote (or would
    write, with ``dry_run``), ``current`` lists the sessions that needed nothing, ``refused`` holds
    one line per session left as it was (recording, unreadable), ``unknown`` the arrays it cannot
    name (not written by llmri)."""

    url: str
    upgraded: dict[str, list[str]] = field(default_factory=dict)
    current: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def upgrade_store(path_or_url: str, *, dry_run: bool = False) -> UpgradeReport:
    """Give every array of every session of the store at ``path_or_url`` its ``dimension_names``
    (and the signals' groups their ``layer`` coordinate). With ``dry_run`` nothing is written."""
    store = ZarrFrameStore(str(path_or_url))
    report = UpgradeReport(store.url)
    loc = store.location
    for sid in store.session_ids():
        try:
            session = store.session(sid)
        except StoreError as exc:
            report.refused.append(str(exc))
            continue
        if session.status == "recording":
            report.refused.append(
                f"{store.url}: session {sid} is recording: not upgraded (run upgrade-store again once it ends)"
            )
            continue
        try:
            files, unknown = _session_files(loc, sid, session.meta)
            report.unknown += unknown
            if not files:
                report.current.append(sid)
                continue
            if not dry_run:
                # chunks first: a coordinate array appears only once its data is there
                loc.put([f for f in files if not f[0].endswith("/zarr.json")], set())
                loc.put([f for f in files if f[0].endswith("/zarr.json")], set())
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{store.url}: session {sid}: upgrade failed: {exc}") from exc
        report.upgraded[sid] = [key for key, _ in files]
    return report


def _session_files(loc: Location, sid: str, meta: dict[str, Any]) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The files to (re)write in session ``sid``, and the arrays found that llmri cannot name."""
    prefix = f"sessions/{sid}/"
    files: list[tuple[str, bytes]] = []
    unknown: list[str] = []
    for key in sorted(k for k in loc.list_prefix(prefix) if k.endswith("/zarr.json")):
        path = key[len(prefix) : -len("/zarr.json")]
        raw = loc.read(key)
        if raw is None:
            continue
        doc = json.loads(raw)
        ndim = len(doc.get("shape") or ())
        if doc.get("node_type") != "array" or doc.get("dimension_names") is not None or ndim == 0:
            continue  # a group; named already; or 0-d, which has no axes to name
        names = dimension_names_for(path, ndim, meta)
        if names is None:
            unknown.append(f"{loc.url}: session {sid}: {path}: not an array llmri writes, left without names")
            continue
        files.append((key, named_document(raw, names)))
    for path, values in coordinate_arrays(meta).items():
        if not loc.exists(f"{prefix}{path}/zarr.json"):
            files += [(f"{prefix}{path}/{key}", data) for key, data in coordinate_files(values, LAYER)]
    return files, unknown
