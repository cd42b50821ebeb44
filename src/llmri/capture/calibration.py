"""Calibration: fit learning reducers and measure per-layer colour scales, cached per model."""

from __future__ import annotations

import hashlib
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.base import Backend
from ..models.identity import cache_dir
from ..reducers.base import Reducer
from .codec import TextCodec

SCALE_QUANTILE = 0.99
_SCALE_TOKENS = 512


def builtin_text() -> str:
    return resources.files("llmri").joinpath("data/calibration.txt").read_text(encoding="utf-8")


def documents(text: str) -> list[str]:
    return [d.strip() for d in text.split("\n---\n") if d.strip()]


def calibration_acts(capture: Backend, codec: TextCodec, text: str, signals: list[str]) -> dict[str, Any]:
    """Run each document of ``text`` through ``capture`` (fresh KV cache per document) and
    return ``{signal: float32 Tensor[n_tokens, layers, d_model]}``."""
    import torch

    out: dict[str, list[Any]] = {s: [] for s in signals}
    for doc in documents(text):
        ids = codec.tok(doc, add_special_tokens=True)["input_ids"]
        cache = None
        for i in range(0, len(ids), 256):
            step = capture.step(torch.tensor([ids[i : i + 256]], dtype=torch.long), cache, logits=False)
            cache = step.cache
            for s in signals:
                out[s].append(step.acts[s].float().cpu())
    return {s: torch.cat(v, dim=0) for s, v in out.items()}


def calibration_means(
    capture: Backend, codec: TextCodec, signals: list[str], text: str | None = None
) -> dict[str, np.ndarray]:
    """``{signal: float32 [layers, d_model]}``: each signal's mean over the calibration text's
    tokens (default: the text llmri ships), what ``llmri.ablate(..., value="mean")`` sets."""
    acts = calibration_acts(capture, codec, builtin_text() if text is None else text, signals)
    return {s: acts[s].mean(dim=0).numpy().astype(np.float32) for s in signals}


def robust_scales(reducer: Reducer, acts: Any, signal: str) -> list[float]:
    import torch

    tiles = reducer.transform(acts[:_SCALE_TOKENS], signal)  # [n, L, H, W]
    flat = tiles.abs().transpose(0, 1).reshape(tiles.shape[1], -1)
    q = torch.quantile(flat.float(), SCALE_QUANTILE, dim=1)
    return [max(float(v), 1e-6) for v in q]


def _cache_file(reducer: Reducer, signal: str, text_key: str) -> Path:
    return cache_dir() / "reducers" / f"{reducer.fingerprint or 'nofp'}-{reducer.spec_key()}-{text_key}-{signal}.npz"


def prepare_reducer(
    reducer: Reducer, capture: Backend, codec: TextCodec, signals: list[str], text: str | None = None
) -> None:
    """Fit ``reducer`` (if it learns) and fill ``reducer.scales`` for ``signals``, from the cache
    when this model, reducer spec and calibration text were seen before."""
    text = text if text is not None else builtin_text()
    text_key = hashlib.sha256(text.encode()).hexdigest()[:10]
    if hasattr(reducer, "calibration"):
        reducer.calibration = "builtin" if text == builtin_text() else f"text:{text_key}"
    todo: list[str] = []
    state: dict[str, np.ndarray] = {}
    for s in signals:
        f = _cache_file(reducer, s, text_key)
        try:
            with np.load(f, allow_pickle=False) as z:
                reducer.scales[s] = [float(x) for x in z["__scale__"]]
                state.update({k: z[k] for k in z.files if k != "__scale__"})
        except (OSError, KeyError, ValueError):
            todo.append(s)
    if reducer.supports_fit and state:
        reducer.load_state_dict(state)
    if not todo:
        return
    acts = calibration_acts(capture, codec, text, todo)
    if reducer.supports_fit:
        reducer.fit(acts)
    full = reducer.state_dict()
    for s in todo:
        reducer.scales[s] = robust_scales(reducer, acts[s], s)
        mine = {k: v for k, v in full.items() if k.split(".")[0] == s}
        _atomic_savez(_cache_file(reducer, s, text_key), __scale__=np.asarray(reducer.scales[s]), **mine)


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
