"""A session's SAE features (docs/FORMAT.md, "SAE features"): which SAEs it holds, from its meta, the
arrays each is stored as (``sae/{name}/{field}``), a frame's rows in them, and :class:`SAEFeatures`,
what :meth:`SessionReader.sae` returns. numpy and the meta only: every store shares it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import StoreError
from ..frame import FeatureRow, Frame

#: The axis of a token's strongest features, 0 the strongest (its length is ``meta["sae"]["k"]``).
SAE_RANK = "sae_rank"
#: Each field of an SAE's rows: its dtype, the shape of one row (``k``: a top-k row) and its axes.
SAE_FIELDS: dict[str, tuple[type, bool]] = {
    "ids": (np.int32, True),
    "values": (np.float16, True),
    "l0": (np.int32, False),
    "fvu": (np.float32, False),
    "cosine": (np.float32, False),
}

#: ``{field: (dtype, row shape, row axes)}`` of one SAE.
SAELayout = dict[str, tuple[type, tuple[int, ...], tuple[str, ...]]]


def sae_records(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of the SAEs a session holds (``meta["sae"]["saes"]``; none: ``[]``)."""
    sae = meta.get("sae")
    if not isinstance(sae, dict):
        return []
    return [r for r in sae.get("saes") or [] if isinstance(r, dict)]


def sae_layout(meta: dict[str, Any]) -> dict[str, SAELayout]:
    """``{sae name: {field: (dtype, row shape, row axes)}}`` of the SAEs ``meta`` says a session holds."""
    sae = meta.get("sae")
    if not isinstance(sae, dict):
        return {}
    k = int(sae.get("k", 0))
    return {
        str(r["name"]): {
            name: (dtype, (k,) if top else (), (SAE_RANK,) if top else ()) for name, (dtype, top) in SAE_FIELDS.items()
        }
        for r in sae_records(meta)
    }


def sae_paths(meta: dict[str, Any]) -> dict[str, tuple[type, tuple[int, ...], tuple[str, ...]]]:
    """``{path: (dtype, row shape, row axes)}`` of every SAE array, ``sae/{name}/{field}``."""
    return {f"sae/{n}/{f}": spec for n, fields in sae_layout(meta).items() for f, spec in fields.items()}


def sae_problem(frame: Frame, layout: dict[str, SAELayout]) -> str:
    """What keeps ``frame`` from fitting a session holding the SAEs of ``layout``, or ``""``."""
    if not layout:
        return ""
    rows = frame.sae or {}
    for name, fields in layout.items():
        row = rows.get(name)
        if row is None:
            return f"frame {frame.index} has no features of SAE {name}"
        k = fields["ids"][1][0]
        if np.shape(row.ids)[0] > k or np.shape(row.values)[0] > k:
            return f"frame {frame.index}: SAE {name} holds {np.shape(row.ids)[0]} features, the session {k}"
    return ""


def _padded(a: Any, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    value: np.ndarray = np.asarray(a, dtype=dtype)
    if value.shape == shape:
        return value
    out: np.ndarray = np.full(shape, -1 if np.issubdtype(dtype, np.integer) else np.nan, dtype=dtype)
    out[: value.shape[0]] = value
    return out


def sae_rows(frame: Frame, layout: dict[str, SAELayout]) -> dict[str, Any]:
    """``{path: row}`` of ``frame`` in each SAE array (top-k rows padded with -1 / NaN to ``k``)."""
    out: dict[str, Any] = {}
    rows = frame.sae or {}
    for name, fields in layout.items():
        row = rows[name]
        for f, (dtype, shape, _) in fields.items():
            out[f"sae/{name}/{f}"] = _padded(getattr(row, f), dtype, shape)
    return out


def stack_features(rows: list[FeatureRow], k: int) -> dict[str, np.ndarray]:
    """Per-position rows as arrays ``{field: [T, ...]}`` (top-k padded to ``k``)."""
    out: dict[str, np.ndarray] = {}
    for f, (dtype, top) in SAE_FIELDS.items():
        shape = (k,) if top else ()
        stacked = [_padded(getattr(r, f), dtype, shape) for r in rows]
        out[f] = np.stack(stacked) if stacked else np.zeros((0, *shape), dtype)
    return out


@dataclass
class SAEFeatures:
    """One SAE's features over a session's positions (:meth:`SessionReader.sae`).

    ``ids`` int32 / ``values`` float16 ``[T, k]``: each token's strongest features, strongest first
    (-1 / NaN past the stored ones; a feature outside the top ``k`` is not stored); ``l0`` int32
    ``[T]``: active features; ``fvu`` / ``cosine`` float32 ``[T]``: the reconstruction's fraction of
    variance unexplained and cosine. ``record``: the SAE's record in the session meta (format,
    architecture, ``d_in``, ``d_sae``, layer, signal, path, ``sha256``); ``labels``: ``{feature: text}``.
    """

    name: str
    record: dict[str, Any]
    ids: np.ndarray
    values: np.ndarray
    l0: np.ndarray
    fvu: np.ndarray
    cosine: np.ndarray
    labels: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def activation(self, feature: int) -> np.ndarray:
        """float32 ``[T]``: ``feature``'s activation at each token (0 where it is not among the stored top-k)."""
        hit = self.ids == int(feature)
        vals = np.where(hit, np.nan_to_num(self.values.astype(np.float32)), 0.0)
        return np.asarray(vals.sum(-1), dtype=np.float32)

    def label(self, feature: int) -> str:
        """``feature``'s label, ``""`` where it has none."""
        return self.labels.get(int(feature), "")

    def __repr__(self) -> str:
        return f"<SAEFeatures {self.name}: {len(self)} tokens x top {self.ids.shape[-1]}, {len(self.labels)} labels>"


def features_of(meta: dict[str, Any], name: str, arrays: dict[str, np.ndarray], where: str) -> SAEFeatures:
    """An :class:`SAEFeatures` of SAE ``name`` from its record in ``meta`` and its ``arrays``."""
    check_sae_name(meta, name, where)
    rec = next(r for r in sae_records(meta) if r.get("name") == name)
    labels = {int(i): str(t) for i, t in (rec.get("labels") or {}).items()}
    return SAEFeatures(name, dict(rec), labels=labels, **arrays)


def sae_names(meta: dict[str, Any]) -> list[str]:
    """The names of the SAEs a session holds."""
    return [str(r.get("name")) for r in sae_records(meta)]


def check_sae_name(meta: dict[str, Any], name: str, where: str) -> None:
    """Raise StoreError (one line) unless the session holds SAE ``name``."""
    if name not in sae_names(meta):
        raise StoreError(f"{where}: no SAE {name!r:.80} (this session has: {', '.join(sae_names(meta)) or 'none'})")
