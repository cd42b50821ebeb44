"""The bundled model's demo SAE (:func:`bundled_sae`): llmri's own captures of its calibration text,
a short TopK training (:func:`llmri.readouts.sae.train.train_sae`), labels from the tokens each
feature fires on most, cached as a SAELens directory. Apart from :mod:`.saes`, which capture uses:
this module runs captures itself."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..readouts.sae import SAE, load_sae

#: The bundled model's demo SAE: where it reads, its size, and the prompts besides the calibration text.
BUNDLED_LAYER, BUNDLED_D_SAE, BUNDLED_K = 15, 128, 8
BUNDLED_PROMPTS = (
    "The capital of France is Paris, and the capital of Japan is Tokyo.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Once upon a time, a little fox lived in a quiet forest near the river.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12",
    "Dear Sir or Madam, I am writing to ask about my order from last Tuesday.",
    "Water boils at 100 degrees Celsius at sea level; ice melts at 0 degrees.",
)


def captured_vectors(model: Any, texts: Sequence[str], layer: int) -> tuple[Any, list[str]]:
    """Each token's full ``resid`` vector at ``layer`` (float32 ``[n, d_model]``) and its text, from
    llmri captures of ``texts`` (raw, no generation) with the lossless ``neurons`` reducer in float32,
    leaving out each text's first token (its outsized norm would rule the training)."""
    import numpy as np

    from .stream import capture

    rows, pieces = [], []
    for text in texts:
        s = capture(model, text, chat=False, max_new_tokens=0, signals="resid", reducer="neurons",
                    frame_dtype="float32", progress=False)  # fmt: skip
        f = s.frames("resid")[:, layer].reshape(len(s), -1)
        rows.append(f[1:])
        pieces += list(s.tokens.text[1:])
    return np.concatenate(rows).astype(np.float32), pieces


def bundled_sae(model: Any = None, *, cache: bool = True) -> SAE:
    """A small TopK SAE of the bundled model (SmolLM2-135M-Instruct): 128 features, 8 active, on
    the ``resid`` of layer 15, trained by :func:`llmri.readouts.sae.train.train_sae` on llmri's captures of
    its calibration text and a few prompts, labelled by the tokens each feature fires on most.

    Trained on first use (seconds on a CPU) and kept in llmri's cache as a SAELens directory with its
    ``labels.json`` (:func:`llmri.load_sae` reads it); ``model``: the bundled model, loaded if ``None``."""
    import os
    import shutil
    import tempfile

    import torch

    from ..models import load_model
    from ..models.identity import cache_dir
    from ..readouts.sae.train import save_sae, top_token_labels, train_sae
    from .calibration import builtin_text, documents

    model = load_model() if model is None else model
    fp = str(getattr(model, "fingerprint", "") or "model")[:12]
    where = cache_dir() / "saes" / f"bundled-resid{BUNDLED_LAYER}-{BUNDLED_D_SAE}-k{BUNDLED_K}-{fp}-v1"
    if not (cache and (where / "cfg.json").is_file()):
        texts = ["\n\n".join(documents(builtin_text())), *BUNDLED_PROMPTS]
        x, pieces = captured_vectors(model, texts, BUNDLED_LAYER)
        sae = train_sae(x, d_sae=BUNDLED_D_SAE, k=BUNDLED_K, steps=400, lr=3e-3, layer=BUNDLED_LAYER, signal="resid",
                        name="smollm2-resid15", model_name=getattr(model, "name", None))  # fmt: skip
        labels = top_token_labels(sae.encode(torch.from_numpy(x)), pieces)
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=where.name + ".tmp-", dir=where.parent))
        try:
            save_sae(sae, tmp, labels=labels)
            if where.exists():
                shutil.rmtree(where)
            os.replace(tmp, where)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_sae(where, name="smollm2-resid15", labels=where / "labels.json")
