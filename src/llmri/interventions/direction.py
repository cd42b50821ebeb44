"""Directions: one vector per layer from contrasting prompts (:func:`direction`), with where it came
from (model fingerprint, prompts' hash, layers, method, signal), saved and loaded as llama.cpp /
repeng GGUF control vectors or safetensors (:mod:`.dirfiles`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from .._errors import CaptureError
from . import dirfiles
from .records import check_layers, check_signal
from .vector import Vector

#: How :func:`direction` makes a layer's vector from the positive and negative activations.
METHODS = ("mean_diff", "pca", "logistic")
#: Which position of each prompt is its activation: the last one, or the mean over the prompt.
READ_AT = ("last", "mean")


@dataclass(frozen=True)
class Direction:
    """A steering direction: ``vectors`` float32 ``[len(layers), d_model]``, row ``k`` for
    ``layers[k]`` (counted from 0: the output of block ``layers[k]``), and its provenance.

    ``model``: the fingerprint of the model it was made on (``None`` for a file that does not say,
    a repeng or llama.cpp control vector): a capture on a model with another fingerprint refuses it.
    ``provenance``: method, signal, the prompts' hash and counts, the model's name; free-form, kept
    in the files llmri writes."""

    is_direction: ClassVar[bool] = True
    vectors: Vector
    layers: tuple[int, ...]
    model: str | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "vectors", Vector.of(self.vectors))
        set_(self, "layers", check_layers(self.layers))
        a = self.vectors.array()
        if a.ndim != 2 or a.shape[0] != len(self.layers):
            raise CaptureError(f"a Direction needs one row per layer: {len(self.layers)} layers, shape {list(a.shape)}")
        set_(self, "provenance", dict(self.provenance))

    @property
    def d_model(self) -> int:
        return self.vectors.width

    @property
    def method(self) -> str | None:
        m = self.provenance.get("method")
        return None if m is None else str(m)

    @property
    def signal(self) -> str:
        return str(self.provenance.get("signal", "resid"))

    @property
    def name(self) -> str | None:
        """What a probe of this direction is called (``provenance["name"]``; :meth:`named`), or ``None``."""
        n = self.provenance.get("name")
        return None if n is None else str(n)

    def named(self, name: str) -> Direction:
        """This direction called ``name`` (kept in its provenance, so in the files it is saved to)."""
        return replace(self, provenance={**self.provenance, "name": str(name)})

    def array(self) -> np.ndarray:
        """The vectors, float32 ``[len(layers), d_model]`` (read-only)."""
        return self.vectors.array()

    def at(self, layers: Any) -> np.ndarray:
        """The rows for ``layers`` (an int, range or list; each must be one of :attr:`layers`)."""
        want = check_layers(layers)
        missing = [x for x in want if x not in self.layers]
        if missing:
            raise CaptureError(
                f"the direction has no vector for layer {missing[0]} (it has layers {_span(self.layers)})"
            )
        a = self.array()
        return np.stack([a[self.layers.index(x)] for x in want])

    def select(self, layers: Any) -> Direction:
        """This direction at ``layers`` only (each one of :attr:`layers`)."""
        return replace(self, vectors=Vector.of(self.at(layers)), layers=check_layers(layers))

    def unbound(self) -> Direction:
        """This direction with no model fingerprint: used on any model of its width (the same
        weights under another backend, whose fingerprint is the GGUF file's)."""
        return replace(self, model=None)

    def save(self, path: Any) -> Any:
        """Write ``.gguf`` (llama.cpp's ``--control-vector`` layout) or ``.safetensors``; returns the path."""
        a = self.array()
        return dirfiles.write(path, {x: a[k] for k, x in enumerate(self.layers)}, self.model, dict(self.provenance))

    def __repr__(self) -> str:
        how = self.method or "?"
        return f"Direction({how}, layers {_span(self.layers)}, d_model {self.d_model}, model {self.model or 'any'})"


def load_direction(path: Any) -> Direction:
    """A direction from a ``.gguf`` control vector (llmri's, llama.cpp's cvector-generator's,
    repeng's: no fingerprint, so any model of its width) or a ``.safetensors`` file llmri wrote.
    One line (a :class:`~llmri.CaptureError`) for anything else."""
    rows, model, prov = dirfiles.read(path)
    return Direction(Vector.of(np.stack(list(rows.values()))), tuple(rows), model, prov)


def _span(layers: Sequence[int]) -> str:
    xs = list(layers)
    if len(xs) > 2 and xs == list(range(xs[0], xs[-1] + 1)):
        return f"{xs[0]}-{xs[-1]}"
    return ",".join(map(str, xs))


def prompts_hash(positive: Sequence[str], negative: Sequence[str]) -> str:
    """sha256 (16 hex) of the two prompt lists, in order."""
    blob = json.dumps({"positive": list(positive), "negative": list(negative)}, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _prompts(name: str, xs: Any) -> list[str]:
    if isinstance(xs, str) or not isinstance(xs, Sequence) or not xs or not all(isinstance(x, str) and x for x in xs):
        raise CaptureError(f"{name} must be a non-empty list of prompts (strings), got {xs!r:.80}")
    return list(xs)


# -- the methods, on float64 [n, d] per layer ------------------------------------------------------


def mean_diff(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """The difference of the two means."""
    out: np.ndarray = pos.mean(0) - neg.mean(0)
    return out


def _scaled(u: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Unit ``u`` pointing from the negatives to the positives, times the means' distance along it:
    every method's vector moves the negatives' mean onto the positives' (along itself) at scale 1."""
    u = u / np.linalg.norm(u)
    gap = float((pos.mean(0) - neg.mean(0)) @ u)
    return u * gap if gap != 0 else u


def pca_diff(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """The first principal direction of the paired differences ``pos[i] - neg[i]`` (uncentred: the
    direction that best explains them, their mean included; repeng centres, which leaves nothing
    when every pair differs the same way), scaled as :func:`_scaled`."""
    diffs = pos - neg
    _, _, vt = np.linalg.svd(diffs, full_matrices=False)
    return _scaled(vt[0], pos, neg)


def logistic(pos: np.ndarray, neg: np.ndarray, c: float = 1.0, iters: int = 50) -> np.ndarray:
    """The weights of an L2-regularised logistic regression (positive = 1), scaled as :func:`_scaled`.

    Minimises ``0.5 |w|^2 + c * sum(log-loss)`` with an unregularised intercept — the objective of
    scikit-learn's ``LogisticRegression(C=c)`` — by Newton's method in the dual form
    ``(X^T S X + I/c)``, so it needs no optional package and is deterministic."""
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    n, d = x.shape
    xa = np.hstack([x, np.ones((n, 1))])
    reg = np.full(d + 1, 1.0 / c)
    reg[-1] = 0.0  # the intercept is not penalised
    w = np.zeros(d + 1)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(xa @ w, -500, 500)))
        grad = xa.T @ (p - y) + reg * w
        s = p * (1 - p)
        h = (xa * s[:, None]).T @ xa + np.diag(reg) + 1e-10 * np.eye(d + 1)
        step = np.linalg.solve(h, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-10 * max(1.0, float(np.abs(w).max())):
            break
    return _scaled(w[:d], pos, neg)


_METHODS = {"mean_diff": mean_diff, "pca": pca_diff, "logistic": logistic}


def from_activations(
    pos: np.ndarray,
    neg: np.ndarray,
    layers: Sequence[int],
    method: str = "mean_diff",
    *,
    model: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Direction:
    """A :class:`Direction` from activations ``[n_prompts, len(layers), d_model]`` of each side."""
    if method not in _METHODS:
        raise CaptureError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    if method == "pca" and len(pos) != len(neg):
        raise CaptureError(f"method='pca' pairs the prompts: {len(pos)} positive, {len(neg)} negative")
    p64, n64 = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    rows = [_METHODS[method](p64[:, k], n64[:, k]) for k in range(len(layers))]
    prov = {"method": method, **(provenance or {})}
    return Direction(Vector.of(np.stack(rows)), tuple(layers), model, prov)


def _backend(model: Any, signal: str, backend: str | None) -> Any:
    from ..backends.base import BACKENDS

    name = backend or ("llama.cpp" if type(model).__name__ == "GGUFModel" else "hf")
    if name not in BACKENDS:
        raise CaptureError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS.names())})")
    return BACKENDS.get(name)(model, [signal])


def read_activations(backend: Any, tokenizer: Any, prompts: Sequence[str], layers: Sequence[int], signal: str,
                     at: str) -> np.ndarray:  # fmt: skip
    """float64 ``[len(prompts), len(layers), d_model]``: each prompt's ``signal`` at its last
    position (``at="last"``) or the mean over its positions, one forward each, no generation."""
    import torch

    out = []
    for text in prompts:
        ids = [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]
        with torch.no_grad():
            step = backend.step(torch.tensor([ids]), None, logits=False)
        a = step.acts[signal].float().cpu().numpy()[:, list(layers)]  # [n, layers, d]
        out.append(a[-1] if at == "last" else a.mean(0))
    return np.stack(out).astype(np.float64)


def _hint(model: Any) -> str:
    """llama.cpp's name of the model's architecture where known (``controlvector.model_hint``)."""
    arch = getattr(model, "architecture", None)  # a GGUF model's general.architecture
    if isinstance(arch, str) and arch:
        return arch
    cfg = getattr(getattr(model, "model", None), "config", None)
    return str(getattr(cfg, "model_type", "") or "")


def direction(
    model: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    layers: Any = None,
    method: str = "mean_diff",
    *,
    signal: str = "resid",
    at: str = "last",
    backend: str | None = None,
) -> Direction:
    """A steering direction per layer from contrasting prompts.

    Parameters
    ----------
    model:
        A loaded model (:func:`llmri.load_model`, :func:`llmri.wrap`, a GGUF model) or a spec to load.
    positive, negative:
        Prompts with and without the concept (raw text, no chat template). ``method="pca"`` pairs
        them: the same number of each.
    layers:
        An int, a range or a list (default: every layer).
    method:
        ``"mean_diff"`` (difference of the means), ``"pca"`` (first principal direction of the
        paired differences) or ``"logistic"`` (an L2 logistic-regression probe, C=1). PCA's and the
        probe's unit vectors are scaled to the means' distance along them, so ``scale=1`` means the
        same for all three.
    signal:
        ``"resid"`` (the block's output, default), ``"attn"`` or ``"mlp"``.
    at:
        ``"last"`` (each prompt's last position, default) or ``"mean"`` (the mean over its positions).
    backend:
        The backend that runs the prompts (default ``hf``; ``llama.cpp`` for a GGUF model).

    Returns
    -------
    Direction
        With provenance: the model's fingerprint, the prompts' hash, layers, method, signal.
    """
    pos, neg = _prompts("positive", positive), _prompts("negative", negative)
    signal = check_signal(signal)
    if method not in METHODS:
        raise CaptureError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    if at not in READ_AT:
        raise CaptureError(f"at must be one of {', '.join(READ_AT)}, got {at!r:.80}")
    if method == "pca" and len(pos) != len(neg):
        raise CaptureError(f"method='pca' pairs the prompts: {len(pos)} positive, {len(neg)} negative")
    if model is None or isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from ..models import load_model

        model = load_model(model, backend=backend)
    n_layers = int(model.n_layers)
    chosen = tuple(range(n_layers)) if layers is None else check_layers(layers)
    if max(chosen) >= n_layers:
        raise CaptureError(f"layer {max(chosen)} is out of range: the model has {n_layers} layers (0-{n_layers - 1})")
    be = _backend(model, signal, backend)
    p = read_activations(be, model.tokenizer, pos, chosen, signal, at)
    q = read_activations(be, model.tokenizer, neg, chosen, signal, at)
    prov = {
        "signal": signal,
        "at": at,
        "prompts": prompts_hash(pos, neg),
        "n_positive": len(pos),
        "n_negative": len(neg),
        "model_name": str(getattr(model, "name", "") or ""),
        "n_layers": n_layers,
        "model_hint": _hint(model),
    }
    fp = getattr(model, "fingerprint", None)
    return from_activations(p, q, chosen, method, model=str(fp) if fp else None, provenance=prov)
