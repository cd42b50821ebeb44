"""Writes ``store-before-dimension-names/``: a store as llmri wrote them before arrays had
``dimension_names`` (and before the ``*/layer`` coordinates), for the upgrade-store tests.

Run with the llmri of commit 0174eda on the path, e.g.::

    git archive 0174eda src/llmri | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python tests/data/make_unnamed_store.py tests/data/store-before-dimension-names

Two sessions: 20 frames of two signals with a reducer state (the frames are those of
``llmri.testing.frames.make_frame``), and a chat-only one of 3 tokens.
"""

from __future__ import annotations

import math
import shutil
import sys

import numpy as np

from llmri.frame import Frame, Token
from llmri.store.zarr import ZarrFrameStore

L, H, W = 4, 3, 5


def make_frame(i: int, signals: list[str], role: str) -> Frame:
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
    return Frame(
        tok,
        {s: rng.standard_normal((L, H, W)).astype(np.float16) for s in signals},
        {s: rng.random(L).astype(np.float32) for s in signals},
        {s: rng.random(L).astype(np.float32) for s in signals},
    )


def main(out: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    store = ZarrFrameStore(out, create=True, background=False)
    signals = ["resid", "mlp"]
    layers = [f"layers.{i}" for i in range(L)]
    meta = {"id": "20261101-120000-aaaaaa", "signals": signals, "layers": layers, "tile": [H, W], "top_k": 5}
    state = {"resid.mean": np.arange(L * 8, dtype=np.float64).reshape(L, 8), "resid.n_samples": np.array([7])}
    with store.create_session({**meta, "special_ids": []}, state) as w:
        for i in range(20):
            w.append(make_frame(i, signals, "prompt" if i < 8 else "generated"))
    chat = {"id": "20261101-120100-bbbbbb", "signals": [], "layers": [], "tile": [0, 0], "top_k": 5}
    with store.create_session({**chat, "special_ids": []}) as w:
        for i in range(3):
            w.append(make_frame(i, [], "generated"))


if __name__ == "__main__":
    main(sys.argv[1])
