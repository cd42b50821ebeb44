"""Feature spikes: where an SAE feature fires far above its usual level in one session.

"Usual" is the session's own: a feature's activations at the tokens where it is among the stored
top-k (position 0 left out: its vector's norm is many times the others'), their median and MAD. A
token's value outside the stored top-k is unknown (below the k-th), so it is neither a firing nor a
zero here. Pure numpy over a session's ``ids`` / ``values`` ``[T, k]``; the markers' reasons are
written by :func:`llmri.readouts.markers`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: 1.4826 * MAD estimates the standard deviation of normal data (as the other markers).
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class Spike:
    """Feature ``feature`` at token ``token``: ``value``, its session ``median`` over ``fires``
    tokens, the robust z-score ``z``, and ``others`` (other features of this SAE spiking there)."""

    token: int
    feature: int
    value: float
    median: float
    fires: int
    z: float
    others: int


def feature_spikes(
    ids: np.ndarray,
    values: np.ndarray,
    *,
    k: float = 5.0,
    floor_frac: float = 0.25,
    min_fires: int = 8,
    max_tokens: float = 0.1,
    skip_first: bool = True,
) -> list[Spike]:
    """Per token, its strongest spike of one SAE: a feature whose activation is above
    ``median + k * s`` of its own activations at the session's tokens where it fires (is among the
    stored top-k), ``s = max(1.4826 * MAD, floor_frac * median)``; a feature is tested only where it
    fires at ``min_fires`` tokens or more. At most ``ceil(max_tokens * T)`` tokens (the strongest);
    sorted by token. ``ids`` int ``[T, k]`` (-1 none), ``values`` float ``[T, k]``."""
    ids = np.asarray(ids)
    vals = np.asarray(values, dtype=np.float64)
    n_tok = int(ids.shape[0]) if ids.ndim == 2 else 0
    first = 1 if skip_first else 0
    if n_tok <= first:
        return []
    tok = np.repeat(np.arange(n_tok), ids.shape[1])[first * ids.shape[1] :]
    fid = ids[first:].reshape(-1)
    val = vals[first:].reshape(-1)
    ok = (fid >= 0) & np.isfinite(val) & (val > 0)
    tok, fid, val = tok[ok], fid[ok], val[ok]
    order = np.argsort(fid, kind="stable")
    tok, fid, val = tok[order], fid[order], val[order]
    feats, starts, counts = np.unique(fid, return_index=True, return_counts=True)
    best: dict[int, Spike] = {}
    hits: dict[int, int] = {}
    for f, s, n in zip(feats.tolist(), starts.tolist(), counts.tolist(), strict=True):
        if n < min_fires:
            continue
        v = val[s : s + n]
        med = float(np.median(v))
        scale = max(MAD_TO_SD * float(np.median(np.abs(v - med))), floor_frac * med, 1e-12)
        z = (v - med) / scale
        for j in np.flatnonzero(z > k).tolist():
            t = int(tok[s + j])
            hits[t] = hits.get(t, 0) + 1
            if t not in best or z[j] > best[t].z:
                best[t] = Spike(t, int(f), float(v[j]), med, int(n), float(z[j]), 0)
    most = int(np.ceil(max_tokens * n_tok))
    kept = sorted(best, key=lambda t: (-best[t].z, t))[:most]
    return [
        Spike(b.token, b.feature, b.value, b.median, b.fires, b.z, hits[t] - 1)
        for t in sorted(kept)
        for b in (best[t],)
    ]
