"""Running statistics of a study: per signal and layer, the count, mean and variance of the
vectors' L2 norms (Welford's update, merged by Chan et al.'s pairwise formula, so the statistics of
several workers combine exactly) and a fixed log-spaced histogram of the norms for quantiles.

Stored with the study (:func:`save_stats`): in a Zarr store, each run's part as the attributes of
the group ``study_stats/<part>`` (docs/FORMAT.md, "Studies"), which :func:`study_stats` merges.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np

from .._errors import StoreError
from ..frame import Frame

#: The histogram's bin edges: log10 of the norm from -4 to 6, 200 bins (~12% wide), plus under/overflow bins.
LOG_LO, LOG_HI, BINS = -4.0, 6.0, 200
#: The Zarr group under a store's root that holds the study's statistics, one child group per run.
STATS_GROUP = "study_stats"


class RunningStats:
    """Per ``(signal, layer)``: ``count``, ``mean``, ``m2`` (the sum of squared deviations: the
    variance is ``m2 / count``) of the norms, and ``hist`` ``[signals, layers, BINS + 2]`` counts
    (first and last bins: below / above the range)."""

    def __init__(self, signals: list[str], n_layers: int) -> None:
        self.signals = list(signals)
        self.n_layers = int(n_layers)
        shape = (len(self.signals), self.n_layers)
        self.count = np.zeros(shape, np.int64)
        self.mean = np.zeros(shape, np.float64)
        self.m2 = np.zeros(shape, np.float64)
        self.hist = np.zeros((*shape, BINS + 2), np.int64)

    def add(self, signal: str, norms: Any) -> None:
        """Add the norms ``[tokens, layers]`` of one signal (a batch: Chan's merge of its own moments)."""
        x = np.asarray(norms, np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_layers:
            raise StoreError(f"running statistics: norms of shape {list(x.shape)}, expected [tokens, {self.n_layers}]")
        x = np.where(np.isfinite(x), x, np.nan)
        n_b = np.sum(~np.isnan(x), 0).astype(np.int64)
        if not n_b.any():
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_b = np.where(n_b > 0, np.nansum(x, 0) / np.maximum(n_b, 1), 0.0)
            m2_b = np.nansum((x - mean_b) ** 2, 0)
        i = self.signals.index(signal)
        self._merge_row(i, n_b, mean_b, m2_b)
        idx = np.clip(np.floor((np.log10(np.maximum(x, 1e-300)) - LOG_LO) / (LOG_HI - LOG_LO) * BINS) + 1, 0, BINS + 1)
        for layer in range(self.n_layers):
            col = idx[:, layer][~np.isnan(x[:, layer])].astype(np.int64)
            self.hist[i, layer] += np.bincount(col, minlength=BINS + 2)

    def _merge_row(self, i: int, n_b: Any, mean_b: Any, m2_b: Any) -> None:
        n_a, mean_a, m2_a = self.count[i], self.mean[i], self.m2[i]
        n = n_a + n_b
        delta = mean_b - mean_a
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
            self.mean[i] = mean_a + delta * frac
            self.m2[i] = m2_a + m2_b + delta**2 * n_a * frac
        self.count[i] = n

    def add_frames(self, frames: Iterable[Frame]) -> None:
        """Add the norms of every signal of ``frames`` (one session's)."""
        frames = list(frames)
        for s in self.signals:
            rows = [f.norms[s] for f in frames if s in f.norms]
            if rows:
                self.add(s, np.stack(rows))

    def merged(self, other: RunningStats) -> RunningStats:
        """These statistics and ``other``'s (the same signals and layers) as one."""
        if other.signals != self.signals or other.n_layers != self.n_layers:
            raise StoreError("running statistics of different signals or layers cannot be merged")
        out = RunningStats(self.signals, self.n_layers)
        out.count, out.mean, out.m2, out.hist = (
            self.count.copy(),
            self.mean.copy(),
            self.m2.copy(),
            self.hist + other.hist,
        )
        for i in range(len(self.signals)):
            out._merge_row(i, other.count[i], other.mean[i], other.m2[i])
        return out

    @property
    def variance(self) -> np.ndarray:
        """The population variance of the norms ``[signals, layers]`` (NaN where nothing was counted)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out: np.ndarray = np.where(self.count > 0, self.m2 / np.maximum(self.count, 1), np.nan)
        return out

    def quantile(self, q: float) -> np.ndarray:
        """The ``q`` quantile of the norms ``[signals, layers]``, from the histogram (to within a
        bin, ~12%: the bin's geometric middle)."""
        cum = np.cumsum(self.hist, -1)
        total = cum[..., -1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            b = np.argmax(cum >= np.maximum(np.ceil(q * total), 1), -1)
        centre = LOG_LO + (np.clip(b, 1, BINS) - 0.5) * (LOG_HI - LOG_LO) / BINS
        out: np.ndarray = np.where(total[..., 0] > 0, 10.0**centre, np.nan)
        return out

    def summary(self) -> dict[str, dict[str, list[float]]]:
        """``{signal: {"count", "mean", "std", "p01", "p50", "p99": [per layer]}}``."""
        std = np.sqrt(self.variance)
        qs = {f"p{int(q * 100):02d}": self.quantile(q) for q in (0.01, 0.5, 0.99)}
        return {
            s: {
                "count": self.count[i].tolist(),
                "mean": self.mean[i].tolist(),
                "std": std[i].tolist(),
                **{k: v[i].tolist() for k, v in qs.items()},
            }
            for i, s in enumerate(self.signals)
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON: what :meth:`from_dict` reads back exactly."""
        return {
            "signals": self.signals,
            "n_layers": self.n_layers,
            "count": self.count.tolist(),
            "mean": self.mean.tolist(),
            "m2": self.m2.tolist(),
            "hist": self.hist.tolist(),
            "hist_log10": [LOG_LO, LOG_HI, BINS],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunningStats:
        out = cls(list(d["signals"]), int(d["n_layers"]))
        out.count = np.asarray(d["count"], np.int64).reshape(out.count.shape)
        out.mean = np.asarray(d["mean"], np.float64).reshape(out.mean.shape)
        out.m2 = np.asarray(d["m2"], np.float64).reshape(out.m2.shape)
        out.hist = np.asarray(d["hist"], np.int64).reshape(out.hist.shape)
        return out


def _zarr_root(store: Any) -> Any:
    location = getattr(store, "location", None)
    loc = location() if callable(location) else location
    return getattr(loc, "zstore", None)


def save_stats(store: Any, stats: RunningStats, part: str | None = None) -> str:
    """Store ``stats`` as one part of the study's statistics (a new part unless ``part`` is given:
    a worker rewrites its own part as it goes) and return the part's name."""
    part = part or uuid.uuid4().hex[:12]
    zstore = _zarr_root(store)
    if zstore is None:  # the in-memory store: on the object
        parts = store.__dict__.setdefault("study_stats_parts", {})
        parts[part] = stats.to_dict()
        return part
    import zarr

    g = zarr.open_group(store=zstore, path=f"{STATS_GROUP}/{part}", mode="a")
    g.attrs.update({"llmri_study_stats": stats.to_dict()})
    return part


def study_stats(store: Any, *, recompute: bool = False) -> RunningStats | None:
    """The running statistics of the study in ``store`` (a path, URL or FrameStore): every stored
    part merged, or (``recompute``, or nothing stored) recomputed from the complete study sessions'
    norms. ``None`` for a store without study sessions."""
    from ..store import FrameStore, open_store

    fs: FrameStore = store if isinstance(store, FrameStore) else open_store(store)
    parts: list[dict[str, Any]] = []
    if not recompute:
        zstore = _zarr_root(fs)
        if zstore is None:
            parts = list(getattr(fs, "study_stats_parts", {}).values())
        else:
            import zarr

            try:
                root = zarr.open_group(store=zstore, path=STATS_GROUP, mode="r")
            except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
                root = None
            if root is not None:
                for _, g in sorted(root.groups()):
                    d = g.attrs.get("llmri_study_stats")
                    if isinstance(d, dict):
                        parts.append(d)
    if parts:
        out = RunningStats.from_dict(parts[0])
        for d in parts[1:]:
            out = out.merged(RunningStats.from_dict(d))
        return out
    total: RunningStats | None = None
    for sid in fs.session_ids():
        s = fs.session(sid)
        if s.status != "complete" or not isinstance(s.meta.get("study"), dict):
            continue
        if total is None:
            total = RunningStats(s.signals, len(s.layers))
        for sig in s.signals:
            total.add(sig, s.norms(sig))
    return total
