"""The logit lens: each layer's residual read through the model's final norm and unembedding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import CaptureError

#: Alternatives kept per position and layer.
LENS_TOP_K = 5
#: Lens logits computed at once, in elements (positions x layers x vocab): a prefill chunk is cut
#: into groups of positions of at most this size (64 MiB of float32), each one matmul.
MAX_ELEMENTS = 1 << 24
#: Logits whose statistics are computed at once, in elements (512 KiB of float32): a group's
#: ``[rows, vocab]`` logits are walked a few rows at a time, so that the half-dozen passes over
#: them (max, exp, sums, ranks) stay in a core's cache. 3-4x faster than whole groups on the
#: 2-core machine of docs/benchmarks.md, where the lens is the readouts' largest cost.
STATS_ELEMENTS = 1 << 17


@dataclass
class LensRows:
    """The logit lens of ``n`` consecutive positions (``[n, layers, ...]``, numpy).

    Row ``t`` is what each layer predicts for position ``t + 1``. ``top_ids`` int64 and
    ``top_probs`` float32 ``[n, L, k]``; ``entropy`` float32 ``[n, L]`` (nats); ``next_prob``
    float32 and ``next_rank`` int64 ``[n, L]``: the probability each layer gives the token that
    actually came next and its rank (the number of vocabulary entries with a strictly greater
    probability: 0 is top-1), NaN / -1 where the next token is not known yet. ``pending`` holds
    what fills the last row once its next token is known (:func:`fill_next`), ``None`` when every
    row is complete.
    """

    top_ids: np.ndarray
    top_probs: np.ndarray
    entropy: np.ndarray
    next_prob: np.ndarray
    next_rank: np.ndarray
    pending: LensPending | None = None
    vocab: int = 0  # the vocabulary size (0 where there were no positions)

    def __len__(self) -> int:
        return int(self.top_ids.shape[0])


@dataclass
class LensPending:
    """The lens of one position whose next token is not known yet: ``logits`` float32
    ``[L, vocab]`` and their log-sum-exp ``[L]``, kept (on the model's device) until it is."""

    logits: Any
    lse: Any


#: The floor of ``logit - max`` before ``exp`` in the statistics: exp(-87) = 1.6e-38 is float32's
#: smallest normal number. Below it exp gives subnormals, which this CPU computes ~20x slower (a
#: microcode assist per element: a lens row of an early layer, whose logits spread over hundreds,
#: took 1.6 ms instead of 0.08). Each clamped entry adds < 1.6e-38 to a sum of at least 1 (and
#: < 1.4e-36 to the entropy's), nothing at float32 precision; probabilities of single tokens come
#: from the unclamped logits.
EXP_FLOOR = -87.0

#: Columns per block of :func:`topk_rows`.
TOPK_BLOCK = 128


def topk_rows(x: Any, k: int, block: int = TOPK_BLOCK) -> tuple[Any, Any]:
    """``x.topk(k, dim=-1)`` (values, indices) of float rows ``[m, v]``, ~10x faster for a
    vocabulary-wide row: the k largest entries lie in the k blocks of ``block`` columns whose maxima
    are largest (any other block's maximum has k blocks' maxima at least as large above it), so one
    max per block, a top-k of the block maxima, and a top-k of those k blocks' entries (plus the
    columns after the last whole block) give the same values; indices may differ only between equal
    values. Small rows go to ``topk`` itself."""
    import torch

    m, v = int(x.shape[0]), int(x.shape[-1])
    nb = v // block
    if nb < 4 * k:
        out: tuple[Any, Any] = x.topk(k, dim=-1)  # typed where the library returns Any
        return out
    maxima = x[:, : nb * block].reshape(m, nb, block).amax(-1)
    blocks = maxima.topk(k, dim=-1).indices  # [m, k]
    cand = (blocks[:, :, None] * block + torch.arange(block, device=x.device)).reshape(m, k * block)
    if v > nb * block:
        tail = torch.arange(nb * block, v, device=x.device).expand(m, -1)
        cand = torch.cat([cand, tail], dim=1)
    values, at = x.gather(1, cand).topk(k, dim=-1)
    return values, cand.gather(1, at)


def _stats(logits: Any, k: int) -> tuple[Any, Any, Any, Any, Any]:
    """Top-k ids and probabilities, entropy, max and log-sum-exp of float32 ``[m, vocab]`` rows.

    One exp pass: with l = logits - max, e = exp(l), z = sum(e): entropy = log z - sum(e * l) / z.
    The sum is torch's pairwise one over ``e * l`` formed in place (a float32 dot product over the
    vocabulary, as ``bmm`` gives, accumulates ~1e-4 nats of error at 10 nats; this ~1e-6). ``l`` is
    clamped at :data:`EXP_FLOOR` (masked -inf logits too).
    """
    top_l, top_i = topk_rows(logits, k)
    mx = top_l[:, :1]
    shifted = (logits - mx).clamp_min_(EXP_FLOOR)
    e = shifted.exp()
    z = e.sum(-1)
    lse_shifted = z.log()
    dot = e.mul_(shifted).sum(-1)
    entropy = (lse_shifted - dot / z).clamp_min(0)
    top_p = (top_l - mx - lse_shifted[:, None]).exp()
    return top_i, top_p, entropy, mx[:, 0], mx[:, 0] + lse_shifted


def _next(logits: Any, lse: Any, ids: Any) -> tuple[Any, Any]:
    """Probability and rank (entries strictly greater) of ``ids[i]`` in row ``i`` of ``logits``."""
    import torch

    chosen = logits.gather(1, ids[:, None])
    rank = (logits > chosen).sum(-1, dtype=torch.int32)  # int32: half the time of the default int64 sum
    return (chosen[:, 0] - lse).exp(), rank


def logit_lens(
    resid: Any,
    head: Callable[[Any], Any],
    next_ids: Sequence[int] | Any = (),
    *,
    k: int = LENS_TOP_K,
    max_elements: int = MAX_ELEMENTS,
    vocab: int = 0,
) -> LensRows:
    """The logit lens of one step's positions, from their full residual vectors.

    ``resid``: Tensor ``[n, L, d_model]`` (each block's output, the ``resid`` signal, in the
    model's dtype and on its device); ``head``: the model's final norm + unembedding
    (:meth:`~llmri.backends.base.Backend.lens_head`), ``[..., d] -> float32 [..., vocab]`` (or
    a lower-precision copy's dtype);
    ``next_ids``: the token at position ``t + 1`` for each row ``t``, known for every row (``n``
    ids) or for all but the last (``n - 1``; then ``pending`` keeps the last row's logits for
    :func:`fill_next`). All layers of a group of positions go through ``head`` in one call;
    statistics are float32 whatever the model's dtype. ``vocab``: the vocabulary size where the
    caller knows it (from an earlier call's :attr:`LensRows.vocab`): the first group is then as
    large as ``max_elements`` allows, not one position.
    """
    import torch

    with torch.inference_mode():
        return _logit_lens(resid, head, next_ids, k, max_elements, vocab)


def _logit_lens(
    resid: Any, head: Callable[[Any], Any], next_ids: Any, k: int, max_elements: int, vocab: int
) -> LensRows:
    import torch

    n, n_layers = int(resid.shape[0]), int(resid.shape[1])
    ids = torch.as_tensor(list(next_ids) if not isinstance(next_ids, torch.Tensor) else next_ids, dtype=torch.long)
    if len(ids) not in (n, n - 1) and not (n == 0 and len(ids) == 0):
        raise ValueError(f"next_ids: {n} or {n - 1} ids for {n} positions, got {len(ids)}")
    top_ids = np.full((n, n_layers, k), -1, dtype=np.int64)
    top_probs = np.full((n, n_layers, k), np.nan, dtype=np.float32)
    entropy = np.full((n, n_layers), np.nan, dtype=np.float32)
    next_prob = np.full((n, n_layers), np.nan, dtype=np.float32)
    next_rank = np.full((n, n_layers), -1, dtype=np.int64)
    pending = None
    group = max(1, max_elements // max(1, n_layers * vocab)) if vocab else 1
    start = 0
    while start < n:
        stop = min(n, start + group)
        logits = head(resid[start:stop])  # [g, L, vocab]: one matmul for every layer
        g = stop - start
        vocab = int(logits.shape[-1])
        flat = logits.reshape(g * n_layers, vocab)
        # the token after each row: known for the first `known` positions of the group
        known = max(0, min(stop, len(ids)) - start)
        row_ids = ids[start : start + known].to(flat.device).repeat_interleave(n_layers)
        ti, tp, ent, lse, p, r = _group_stats(flat, min(k, vocab), row_ids)
        kk = ti.shape[-1]
        top_ids[start:stop, :, :kk] = ti.reshape(g, n_layers, kk).cpu().numpy()
        top_probs[start:stop, :, :kk] = tp.reshape(g, n_layers, kk).cpu().numpy()
        entropy[start:stop] = ent.reshape(g, n_layers).cpu().numpy()
        if known:
            next_prob[start : start + known] = p.reshape(known, n_layers).cpu().numpy()
            next_rank[start : start + known] = r.reshape(known, n_layers).cpu().numpy()
        if stop == n and len(ids) < n:
            pending = LensPending(logits=flat[-n_layers:].float().clone(), lse=lse[-n_layers:].clone())
        start = stop
        group = max(1, max_elements // max(1, n_layers * vocab))
    return LensRows(top_ids, top_probs, entropy, next_prob, next_rank, pending, vocab)


def _group_stats(flat: Any, k: int, row_ids: Any) -> tuple[Any, Any, Any, Any, Any, Any]:
    """:func:`_stats` of every row of ``flat`` ``[m, vocab]`` and :func:`_next` of its first
    ``len(row_ids)`` rows, a few rows at a time (:data:`STATS_ELEMENTS`; on a GPU all at once):
    ``(top_ids, top_probs, entropy, lse, next_prob, next_rank)``."""
    import torch

    m, vocab = int(flat.shape[0]), int(flat.shape[1])
    step = m if flat.device.type != "cpu" else max(1, STATS_ELEMENTS // max(1, vocab))
    known = int(row_ids.shape[0])
    parts: list[tuple[Any, ...]] = []
    nexts: list[tuple[Any, Any]] = []
    for a in range(0, m, step):
        b = min(m, a + step)
        chunk = flat[a:b].float()  # a no-op for float32; a lowered head's rows converted here, in cache
        ti, tp, ent, _, lse = _stats(chunk, k)
        parts.append((ti, tp, ent, lse))
        if a < known:
            c = min(b, known)
            nexts.append(_next(chunk[: c - a], lse[: c - a], row_ids[a:c]))
    ti, tp, ent, lse = (torch.cat(x) if len(parts) > 1 else x[0] for x in zip(*parts, strict=True))
    if not nexts:
        return ti, tp, ent, lse, None, None
    p, r = (torch.cat(x) if len(nexts) > 1 else x[0] for x in zip(*nexts, strict=True))
    return ti, tp, ent, lse, p, r


def fill_next(pending: LensPending, next_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(next_prob, next_rank)`` ``[L]`` of the position ``pending`` was kept for, now that the
    token after it (``next_id``) is known."""
    import torch

    n_layers = int(pending.logits.shape[0])
    with torch.inference_mode():
        ids = torch.full((n_layers,), int(next_id), dtype=torch.long, device=pending.logits.device)
        p, r = _next(pending.logits, pending.lse, ids)
    return p.cpu().numpy().astype(np.float32), r.cpu().numpy().astype(np.int64)


def lens_error(head: Callable[[Any], Any], last_resid: Any, logits: Any) -> float:
    """Largest ``|head(last_resid) - logits|`` relative to the logits' spread: ~1e-6 in float32
    when ``head`` is the model's own path (``last_resid`` ``[n, d]``: the last layer's ``resid``,
    ``logits`` ``[n, vocab]``: the model's logits of the same positions)."""
    import torch

    got = head(last_resid).float()
    want = torch.as_tensor(logits).float().to(got.device)
    if got.shape != want.shape:
        return float("inf")
    return float((got - want).abs().max() / want.std().clamp_min(1e-12))


def check_lens_head(head: Callable[[Any], Any], last_resid: Any, logits: Any, tolerance: float = 1e-3) -> None:
    """Raise :class:`CaptureError` unless the lens at the last layer reproduces the model's
    logits: the check an integration runs once, on the prefill, for architectures whose forward
    post-processes its logits in a way the backend does not know."""
    err = lens_error(head, last_resid, logits)
    if not err <= tolerance:
        raise CaptureError(
            f"the logit lens at the last layer does not reproduce the model's logits (error {err:.2e} of their "
            "spread): this architecture post-processes its logits in a way llmri does not know; lens=True is "
            "not available"
        )
