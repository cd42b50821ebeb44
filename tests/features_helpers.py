"""Helpers shared by the viewer's SAE feature tests: a tiny SAE on the synthetic backend, a store with
a session recorded with it, and a copy of that session where one feature spikes at one token."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

import llmri
from llmri.backends.synthetic import SyntheticModel

PROMPT = "Why is the sky blue?"
K = 4
LABELS = {3: "three things", 5: "the colour blue", 7: "sky and weather"}


def tiny_sae(d_in: int = 64, d_sae: int = 32, layer: int = 2) -> Any:
    """A ReLU SAE of the synthetic model's width, random but fixed, with three labels."""
    import torch

    from llmri.readouts.sae import SAE

    g = torch.Generator().manual_seed(0)
    w = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    sae = SAE(W_enc=w, b_enc=torch.zeros(d_sae), W_dec=w.T.contiguous(), b_dec=torch.zeros(d_in),
              architecture="relu", name="toy", source_format="test", path="", layer=layer, signal="resid")  # fmt: skip
    return sae.with_labels(LABELS)


def most_frequent(ids: np.ndarray) -> int:
    """The feature stored at the most tokens (position 0 left out)."""
    flat = ids[1:].reshape(-1)
    flat = flat[flat >= 0]
    return int(np.bincount(flat).argmax())


def spiked_copy(store: Any, session: Any, name: str, feature: int, at: int, factor: float = 20.0) -> str:
    """A copy of ``session`` in ``store`` where ``feature`` of SAE ``name`` is ``factor`` times its
    median at token ``at`` (the strongest of that token's features): the copy's id."""
    f = session.sae(name)
    a = f.activation(feature)[1:]
    value = float(np.median(a[a > 0])) * factor
    with store.create_session(dict(session.meta)) as w:
        for i in range(len(session)):
            fr = session.frame(i)
            if i == at:
                row = fr.sae[name]
                ids = [feature] + [int(x) for x in row.ids if int(x) != feature][: K - 1]
                vals = [value] + [float(v) for x, v in zip(row.ids, row.values, strict=True) if int(x) != feature]
                new = dataclasses.replace(row, ids=np.asarray(ids, np.int32), values=np.asarray(vals[:K], np.float16))
                fr = dataclasses.replace(fr, sae={**fr.sae, name: new})
            w.append(fr)
        return str(w.id)


def feature_store(path: Path) -> tuple[Any, str, str, int, int]:
    """A Zarr store at ``path`` with a synthetic chat recorded with :func:`tiny_sae` and its spiked
    copy: ``(sae, session id, spiked id, feature, token)``."""
    sae = tiny_sae()
    s = llmri.capture(SyntheticModel(), PROMPT, saes=[sae], sae_k=K, max_new_tokens=12, store=str(path))
    store = llmri.open_store(str(path))
    feature = most_frequent(s.sae("toy").ids)
    at = len(s) - 5
    spiked = spiked_copy(store, s, "toy", feature, at)
    return sae, str(s.id), spiked, feature, at
