"""Hand-made frames for testing stores and viewers without a model: distinct, deterministic
values per position (with lens and attention rows where asked), and the session meta they fit."""

from __future__ import annotations

import math

import numpy as np

from ..frame import AttentionRow, Frame, LensRow, Token

L, H, W = 4, 3, 5
SIGNALS = ["resid", "mlp"]


#: Readout sizes of the hand-made frames: lens k, attention heads and k.
LENS_K, HEADS, ATTN_K = 5, 2, 6


def make_readouts(i: int, rng) -> tuple[LensRow, AttentionRow]:
    """Lens and attention rows for position ``i``: the last row has no next token, attention
    keeps only the ``i + 1`` positions it can see (padded), layer 1 has no attention."""
    probs = np.sort(rng.random((L, LENS_K)).astype(np.float32))[:, ::-1]
    lens = LensRow(
        top_ids=rng.integers(0, 1000, (L, LENS_K)).astype(np.int32),
        top_probs=np.ascontiguousarray(probs),
        next_prob=rng.random(L).astype(np.float32),
        next_rank=rng.integers(0, 50, L).astype(np.int32),
        entropy=rng.random(L).astype(np.float32),
    )
    k = min(ATTN_K, i + 1)
    pos = np.full((L, HEADS, k), -1, np.int32)
    pos[:] = np.arange(i, i - k, -1)
    weight = rng.random((L, HEADS, k)).astype(np.float32)
    pos[1], weight[1] = -1, np.nan
    attn = AttentionRow(
        top_pos=pos,
        top_weight=weight,
        entropy=rng.random((L, HEADS)).astype(np.float32),
        sink=rng.random((L, HEADS)).astype(np.float32),
    )
    return lens, attn


def make_frame(i: int, signals: list[str] = SIGNALS, role: str = "prompt", readouts: bool = False) -> Frame:
    """A deterministic, distinct frame for position ``i`` (with lens and attention rows if ``readouts``)."""
    rng = np.random.default_rng(i)
    tok = Token(
        index=i,
        id=100 + i,
        text=f"t{i}é" if i % 3 else "",
        role=role,
        logprob=math.nan if i == 0 else -0.5 * i,
        entropy=math.nan if i == 0 else 0.1 * i,
        top_ids=() if i == 0 else (100 + i, 7, 8),
        top_probs=() if i == 0 else (0.5, 0.25, 0.125),
        top_texts=() if i == 0 else (f"t{i}", "a", "b"),
    )
    frame = Frame(
        tok,
        {s: rng.standard_normal((L, H, W)).astype(np.float16) for s in signals},
        {s: rng.random(L).astype(np.float32) for s in signals},
        {s: rng.random(L).astype(np.float32) for s in signals},
    )
    if readouts:
        frame.lens, frame.attention = make_readouts(i, rng)
    return frame


def base_meta(signals: list[str] = SIGNALS, readouts: bool = False) -> dict:
    meta = {"signals": list(signals), "layers": [f"layers.{i}" for i in range(L)], "tile": [H, W], "top_k": 5}
    if readouts:
        meta["lens"] = {"k": LENS_K}
        meta["attention"] = {"k": ATTN_K, "heads": HEADS}
    return meta


def padded(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.full(shape, -1 if a.dtype.kind == "i" else np.nan, dtype=a.dtype)
    out[tuple(slice(0, n) for n in a.shape)] = a
    return out
