"""Markers on the timeline: tokens, layers and heads where something unusual happens.

Every test is a robust z-score against the session itself: ``z = (x - median) / s`` with
``s = max(1.4826 * MAD, floor)`` (1.4826 * MAD estimates the standard deviation of normal data;
the floor keeps a very regular session from marking tiny wiggles). The thresholds are in
:class:`Thresholds` and ``docs/readouts.md``; the same arrays always give the same markers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import LlmriError

#: Marker kinds, in the order markers of one token are listed.
KINDS: tuple[str, ...] = (
    "surprise",
    "entropy_spike",
    "norm_outlier",
    "early_decision",
    "late_decision",
    "attention_jump",
    "feature_spike",
)
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class Marker:
    """Something unusual at token ``token`` (and ``layer``, ``head``, ``signal`` where it has
    one): ``kind`` (one of :data:`KINDS`), ``reason`` in words, ``score`` the robust z-score."""

    kind: str
    token: int
    layer: int | None
    reason: str
    head: int | None = None
    signal: str | None = None
    score: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "token": self.token,
            "layer": self.layer,
            "head": self.head,
            "signal": self.signal,
            "score": round(float(self.score), 3),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Thresholds:
    """When a value is unusual: its robust z-score passes ``*_k``, with ``*_floor`` the least
    scale ``s`` (in the value's unit). A kind needs ``min_values`` finite values to be tested."""

    #: Token log-probability (nats) below ``median - k * s``.
    surprise_k: float = 3.5
    surprise_floor: float = 0.5
    #: Next-token entropy (nats) above ``median + k * s``.
    entropy_k: float = 3.5
    entropy_floor: float = 0.25
    #: ``log(norm)`` of one signal at one layer, against that layer over the session's tokens,
    #: either way. ``norm_skip_first``: position 0 is neither tested nor part of the median
    #: (most models give it norms many times the others', the attention sink).
    norm_k: float = 5.0
    norm_floor: float = 0.05
    norm_skip_first: bool = True
    #: Decision layer (the first layer from which the lens's top-1 is the last layer's top-1, and
    #: stays) below ``median - k * s`` (early) or above ``median + k * s`` (late).
    #: The floor is ``decision_floor`` layers or ``decision_floor_frac`` of the model's depth,
    #: whichever is more: on 30 layers the answer tokens settle at the last layer and a prompt
    #: token at 25 is not unusual (a 1-layer floor marked 13 of a 45-token chat's tokens; 3: 2).
    decision_k: float = 3.5
    decision_floor: float = 1.0
    decision_floor_frac: float = 0.1
    #: Attention jump of one head (total variation between its distributions at consecutive
    #: tokens) above ``median + k * s`` of that head, and at least ``jump_min``. ``k`` is higher
    #: than the others' because every one of the ``L * H`` heads is tested at every token (at 3.5,
    #: 40 of a 45-token chat's tokens had one). A token is marked once, for its strongest head
    #: (the reason counts the others), and at most ``jump_max_tokens`` of the session's tokens
    #: (rounded up), the strongest, are marked.
    jump_k: float = 6.0
    jump_floor: float = 0.1
    jump_min: float = 0.5
    jump_max_tokens: float = 0.1
    #: An SAE feature above ``median + k * s`` of its own activations at the session's tokens where
    #: it is among the stored top-k, ``s`` at least ``feature_floor_frac`` of that median
    #: (:func:`~llmri.readouts.sae.spikes.feature_spikes`); one per token and SAE, at most
    #: ``feature_max_tokens`` of the tokens.
    feature_k: float = 5.0
    feature_floor_frac: float = 0.25
    feature_max_tokens: float = 0.1
    min_values: int = 8


THRESHOLDS = Thresholds()


def _nanmedian(x: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice gives NaN, as wanted
        out: np.ndarray = np.nanmedian(x, axis=axis, keepdims=keepdims)  # typed where the library returns Any
        return out


def robust_z(x: np.ndarray, floor: float, axis: int = 0, mask: np.ndarray | None = None) -> np.ndarray:
    """``(x - median) / max(1.4826 * MAD, floor)`` along ``axis``, ignoring NaNs (and ``~mask``)."""
    x = np.asarray(x, dtype=np.float64)
    ref = x if mask is None else np.where(mask, x, np.nan)
    med = _nanmedian(ref, axis, keepdims=True)
    mad = _nanmedian(np.abs(ref - med), axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        out: np.ndarray = (x - med) / np.maximum(MAD_TO_SD * mad, floor)  # typed where the library returns Any
        return out


def _median(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def _enough(x: np.ndarray, th: Thresholds) -> bool:
    return int(np.isfinite(x).sum()) >= th.min_values


def _label(texts: list[str] | None, t: Any) -> str:
    t = int(t)
    return f"token {t} {texts[t]!r}" if texts is not None and t < len(texts) else f"token {t}"


def decision_layers(top1: np.ndarray) -> np.ndarray:
    """Per position, the first layer from which the lens's top-1 id equals the last layer's and
    stays equal (``top1`` int ``[T, L]``, -1 where absent): int ``[T]``, -1 where absent."""
    top1 = np.asarray(top1)
    if top1.ndim != 2 or top1.shape[1] == 0:
        return np.full(top1.shape[:1], -1, dtype=np.int64)
    n_layers = top1.shape[1]
    same = top1 == top1[:, -1:]
    # the last layer where the top-1 differs from the final one; the decision is the layer after
    differs = ~same
    last_diff = np.where(differs.any(1), n_layers - 1 - np.argmax(differs[:, ::-1], axis=1), -1)
    out = (last_diff + 1).astype(np.int64)
    out[top1[:, -1] < 0] = -1
    return out


def attention_jumps(top_pos: np.ndarray, top_weight: np.ndarray) -> np.ndarray:
    """Per token ``t >= 1``, layer and head: the total variation distance between the head's
    attention at ``t - 1`` and at ``t``, on the stored top-k (positions outside a row's top-k
    count as weight 0: exact with ``k="full"``, else within half the weight the two rows keep
    outside their top-k). ``top_pos`` / ``top_weight`` ``[T, L, H, k]``; float32 ``[T, L, H]``,
    NaN for token 0 and absent heads."""
    pos = np.asarray(top_pos)
    w = np.nan_to_num(np.asarray(top_weight, dtype=np.float64), nan=0.0)
    w[pos < 0] = 0.0
    n_tok = pos.shape[0]
    out = np.full(pos.shape[:3], np.nan, dtype=np.float32)
    if n_tok < 2:
        return out
    present = np.asarray((pos >= 0).any(-1))  # [T, L, H]
    for layer in range(pos.shape[1]):
        pa, pb = pos[:-1, layer], pos[1:, layer]  # [T-1, H, k]
        wa, wb = w[:-1, layer], w[1:, layer]
        match = (pa[..., :, None] == pb[..., None, :]) & (pa[..., :, None] >= 0)  # [T-1, H, k, k]
        b_at_a = (match * wb[..., None, :]).sum(-1)
        b_unmatched = wb * ~match.any(-2)
        tv = 0.5 * (np.abs(wa - b_at_a).sum(-1) + b_unmatched.sum(-1))
        ok = present[:-1, layer] & present[1:, layer]
        out[1:, layer] = np.where(ok, tv, np.nan)
    return out


def find_markers(
    *,
    logprob: np.ndarray | None = None,
    entropy: np.ndarray | None = None,
    norms: Mapping[str, np.ndarray] | None = None,
    lens_top1: np.ndarray | None = None,
    attn_pos: np.ndarray | None = None,
    attn_weight: np.ndarray | None = None,
    texts: list[str] | None = None,
    features: Mapping[str, Any] | None = None,
    thresholds: Thresholds = THRESHOLDS,
) -> list[Marker]:
    """Markers from plain arrays; each input is optional and only its markers need it.

    ``logprob`` / ``entropy`` ``[T]`` (the token table's: what predicted each token, NaN for
    position 0); ``norms`` ``{signal: [T, L]}``; ``lens_top1`` int ``[T, L]`` (the lens's top-1
    id per position and layer); ``attn_pos`` / ``attn_weight`` ``[T, L, H, k]`` (the attention
    readout's top-k); ``texts`` the tokens' text, for the reasons; ``features`` ``{sae name:
    SAEFeatures}`` (``ids`` / ``values`` ``[T, k]``, ``record``, ``label()``). Sorted by token, then
    kind, layer, head.
    """
    th = thresholds
    out: list[Marker] = []
    if logprob is not None:
        lp = np.asarray(logprob, dtype=np.float64)
        if _enough(lp, th):
            z = robust_z(lp, th.surprise_floor)
            med = _median(lp)
            for t in np.flatnonzero(z < -th.surprise_k):
                out.append(
                    Marker(
                        "surprise",
                        int(t),
                        None,
                        f"{_label(texts, t)}: log p {lp[t]:.2f} (p {np.exp(lp[t]):.3g}), "
                        f"{-z[t]:.1f} robust SDs below the session's median {med:.2f}",
                        score=float(z[t]),
                    )
                )
    if entropy is not None:
        ent = np.asarray(entropy, dtype=np.float64)
        if _enough(ent, th):
            z = robust_z(ent, th.entropy_floor)
            med = _median(ent)
            for t in np.flatnonzero(z > th.entropy_k):
                out.append(
                    Marker(
                        "entropy_spike",
                        int(t),
                        None,
                        f"{_label(texts, t)}: entropy {ent[t]:.2f} nats, {z[t]:.1f} robust SDs above the "
                        f"session's median {med:.2f}",
                        score=float(z[t]),
                    )
                )
    for signal, arr in (norms or {}).items():
        x = np.asarray(arr, dtype=np.float64)
        if x.ndim != 2:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            logn = np.where(x > 0, np.log(x), np.nan)
        mask = np.ones(x.shape, dtype=bool)
        if th.norm_skip_first:
            mask[:1] = False
        if x.size == 0 or int((np.isfinite(logn) & mask).sum(0).min()) < th.min_values:
            continue
        z = robust_z(logn, th.norm_floor, axis=0, mask=mask)
        med = np.exp(_nanmedian(np.where(mask, logn, np.nan), 0))
        for t, layer in zip(*np.nonzero((np.abs(z) > th.norm_k) & mask), strict=True):
            ratio = x[t, layer] / med[layer]
            out.append(
                Marker(
                    "norm_outlier",
                    int(t),
                    int(layer),
                    f"{_label(texts, t)}: {signal} norm {x[t, layer]:.3g} at layer {layer} is {ratio:.2f}x that "
                    f"layer's median {med[layer]:.3g} ({abs(z[t, layer]):.1f} robust SDs)",
                    signal=signal,
                    score=float(z[t, layer]),
                )
            )
    if lens_top1 is not None:
        dec = decision_layers(lens_top1).astype(np.float64)
        dec[dec < 0] = np.nan
        if _enough(dec, th):
            z = robust_z(dec, max(th.decision_floor, th.decision_floor_frac * np.shape(lens_top1)[1]))
            med = _median(dec)
            for t in np.flatnonzero(np.abs(z) > th.decision_k):
                kind = "early_decision" if z[t] < 0 else "late_decision"
                out.append(
                    Marker(
                        kind,
                        int(t),
                        int(dec[t]),
                        f"{_label(texts, t)}: the lens settles on the final top-1 at layer {int(dec[t])}, "
                        f"{'earlier' if z[t] < 0 else 'later'} than the session's median layer {med:.0f} "
                        f"({abs(z[t]):.1f} robust SDs)",
                        score=float(z[t]),
                    )
                )
    if attn_pos is not None and attn_weight is not None:
        jumps = attention_jumps(attn_pos, attn_weight)  # [T, L, H]
        counts: np.ndarray = np.isfinite(jumps).sum(0)
        z = robust_z(jumps, th.jump_floor, axis=0)
        head_med = _nanmedian(jumps, 0)
        with np.errstate(invalid="ignore"):
            hit = (z > th.jump_k) & (jumps >= th.jump_min) & (counts >= th.min_values)[None]
        best: dict[int, tuple[float, int, int]] = {}  # token -> its strongest head (z, layer, head)
        for t, layer, head in zip(*np.nonzero(hit), strict=True):
            cand = (float(z[t, layer, head]), int(layer), int(head))
            if int(t) not in best or cand[0] > best[int(t)][0]:
                best[int(t)] = cand
        n_hit = hit.sum((1, 2))
        most = int(np.ceil(th.jump_max_tokens * jumps.shape[0]))
        for tok in sorted(sorted(best, key=lambda u: (-best[u][0], u))[:most]):
            score, lay, hd = best[tok]
            p0, p1 = int(attn_pos[tok - 1, lay, hd, 0]), int(attn_pos[tok, lay, hd, 0])
            w0, w1 = float(attn_weight[tok - 1, lay, hd, 0]), float(attn_weight[tok, lay, hd, 0])
            others = int(n_hit[tok]) - 1
            more = f"; {others} other head{'s' if others != 1 else ''} moved too" if others else ""
            out.append(
                Marker(
                    "attention_jump",
                    tok,
                    lay,
                    f"{_label(texts, tok)}: layer {lay} head {hd} moves its attention (total variation "
                    f"{jumps[tok, lay, hd]:.2f} from the token before; this head's median "
                    f"{head_med[lay, hd]:.2f}): "
                    f"its top position was {p0} ({w0:.2f}), now {p1} ({w1:.2f}){more}",
                    head=hd,
                    score=score,
                )
            )
    for name, feats in (features or {}).items():
        out += _spike_markers(name, feats, texts, th)
    order = {k: i for i, k in enumerate(KINDS)}
    out.sort(key=lambda m: (m.token, order[m.kind], -1 if m.layer is None else m.layer, m.head or 0, m.signal or ""))
    return out


def _spike_markers(name: str, feats: Any, texts: list[str] | None, th: Thresholds) -> list[Marker]:
    from .sae.spikes import feature_spikes

    rec = getattr(feats, "record", None) or {}
    layer, signal = rec.get("layer"), rec.get("signal")
    spikes = feature_spikes(feats.ids, feats.values, k=th.feature_k, floor_frac=th.feature_floor_frac,
                            min_fires=th.min_values, max_tokens=th.feature_max_tokens)  # fmt: skip
    out = []
    for s in spikes:
        label = feats.label(s.feature)
        more = f"; {s.others} other feature{'s' if s.others != 1 else ''} spike too" if s.others else ""
        out.append(
            Marker(
                "feature_spike",
                s.token,
                None if layer is None else int(layer),
                f"{_label(texts, s.token)}: SAE {name} feature {s.feature}"
                + (f" ({label[:60]!r})" if label else "")
                + f" at {s.value:.3g}, {s.value / s.median:.1f}x its median {s.median:.3g} over the {s.fires} "
                f"tokens of this session where it fires ({s.z:.1f} robust SDs){more}",
                signal=signal,
                score=s.z,
            )
        )
    return out


def _optional(obj: Any, name: str) -> Any:
    value = getattr(obj, name, None)
    if callable(value):
        try:
            value = value()
        except (LlmriError, LookupError, ValueError):  # the session has no such arrays (StoreError)
            return None
    return value


def markers(session: Any, thresholds: Thresholds = THRESHOLDS) -> list[Marker]:
    """:func:`find_markers` over what a session holds: its token table (``tokens.logprob``,
    ``tokens.entropy``, ``tokens.text``), ``norms(signal)`` of each of its ``signals``, and, where
    it has them, ``lens`` (with ``top_ids`` ``[T, L, k]``) and ``attention`` (with ``top_pos`` /
    ``top_weight`` ``[T, L, H, k]``), attributes or methods, and ``sae(name)`` of each of its
    ``saes``. Old sessions get the markers their data allows; a chat-only session has no norms."""
    tokens = session.tokens
    norms: dict[str, np.ndarray] = {}
    if not getattr(session, "chat_only", False):
        for signal in getattr(session, "signals", []) or []:
            norms[signal] = np.asarray(session.norms(signal))
    lens = _optional(session, "lens")
    attention = _optional(session, "attention")
    top_ids = getattr(lens, "top_ids", None)
    features: dict[str, Any] = {}
    for name in getattr(session, "saes", None) or []:
        try:
            features[name] = session.sae(name)
        except LlmriError:  # a reader that cannot read SAE features: the other markers still come
            continue
    return find_markers(
        logprob=np.asarray(tokens.logprob),
        entropy=np.asarray(tokens.entropy),
        norms=norms,
        lens_top1=None if top_ids is None else np.asarray(top_ids)[..., 0],
        attn_pos=getattr(attention, "top_pos", None),
        attn_weight=getattr(attention, "top_weight", None),
        texts=list(getattr(tokens, "text", []) or []) or None,
        features=features,
        thresholds=thresholds,
    )
