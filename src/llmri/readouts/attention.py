"""Attention per head: where each head of each layer looks from each position."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

#: Attended positions kept per position, layer and head.
ATTN_TOP_K = 16


@dataclass
class AttentionRows:
    """The attention readout of ``n`` consecutive query positions (numpy).

    ``top_pos`` int64 and ``top_weight`` float32 ``[n, L, H, k]``: the ``k`` attended (key)
    positions with the largest weights, largest first; ``-1`` / NaN past the causal range (a
    position ``t`` attends to ``0 .. t`` only), for a layer without attention, and for heads a
    layer does not have (``H`` is the most heads of any layer). ``entropy`` float32 ``[n, L, H]``
    (nats) and ``sink`` float32 ``[n, L, H]`` (the weight on position 0, the usual attention
    sink), NaN where absent. With ``k="full"``, ``k`` is every position so far: the whole rows,
    losslessly, still sorted by weight.
    """

    top_pos: np.ndarray
    top_weight: np.ndarray
    entropy: np.ndarray
    sink: np.ndarray

    def __len__(self) -> int:
        return int(self.top_pos.shape[0])


def attention_readout(weights: Sequence[Any], *, k: int | Literal["full"] = ATTN_TOP_K) -> AttentionRows:
    """Per query position, layer and head: top-``k`` attended positions, entropy and sink.

    ``weights``: one entry per layer, a Tensor ``[heads, n, n_total]`` of softmax weights (the
    ``n`` new positions are the last ones, ``n_total - n .. n_total - 1``), or ``None`` for a
    layer without attention (:attr:`llmri.backends.base.Step.attn_weights`). Computed in float32.
    """
    import torch

    present = [w for w in weights if w is not None]
    if not present:
        raise ValueError("attention_readout: no layer has attention weights")
    n, n_total = int(present[0].shape[1]), int(present[0].shape[2])
    n_heads = max(int(w.shape[0]) for w in present)
    kk = n_total if k == "full" else min(int(k), n_total)
    if kk < 1:
        raise ValueError(f"k must be >= 1 or 'full', got {k!r}")
    n_layers = len(weights)
    top_pos = np.full((n, n_layers, n_heads, kk), -1, dtype=np.int64)
    top_weight = np.full((n, n_layers, n_heads, kk), np.nan, dtype=np.float32)
    entropy = np.full((n, n_layers, n_heads), np.nan, dtype=np.float32)
    sink = np.full((n, n_layers, n_heads), np.nan, dtype=np.float32)
    with torch.inference_mode():
        dev = present[0].device
        query = torch.arange(n_total - n, n_total, device=dev)
        causal = torch.arange(n_total, device=dev)[None, :] <= query[:, None]  # [n, n_total]
        groups: dict[int, list[int]] = {}  # layers by head count: each group's weights in one stack
        for layer, w in enumerate(weights):
            if w is None:
                continue
            if tuple(w.shape[1:]) != (n, n_total):
                raise ValueError(f"layer {layer}: weights {tuple(w.shape)}, expected [heads, {n}, {n_total}]")
            groups.setdefault(int(w.shape[0]), []).append(layer)
        for h, layers in groups.items():
            # [g, h, n, n_total]: every layer of the group at once (one op each, not one per layer)
            w = torch.stack([weights[i] for i in layers]).float()
            tw, tp = w.masked_fill(~causal, float("-inf")).topk(kk, dim=-1)
            outside = torch.isinf(tw)
            tp = tp.masked_fill(outside, -1)
            tw = tw.masked_fill(outside, float("nan"))
            ent = -(torch.xlogy(w, w) * causal).sum(-1)
            idx = np.asarray(layers)
            # [g, h, n, ...] -> [n, g, h, ...]
            top_pos[:, idx, :h] = tp.permute(2, 0, 1, 3).cpu().numpy()
            top_weight[:, idx, :h] = tw.permute(2, 0, 1, 3).cpu().numpy()
            entropy[:, idx, :h] = ent.permute(2, 0, 1).cpu().numpy()
            sink[:, idx, :h] = w[..., 0].permute(2, 0, 1).cpu().numpy()
    return AttentionRows(top_pos, top_weight, entropy, sink)
