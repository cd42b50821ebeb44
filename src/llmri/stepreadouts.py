"""The readouts of a capture stream, step by step: each position's logit lens and attention rows
(:mod:`llmri.readouts`, computed from the full vectors of one forward), and the lens's wait for
the token after a step's last position.

The token after a step's last position is sampled after that step, and it belongs to the session
only once its own forward has run (a stop, an error or a closed stream may come first). So with the
lens on, the capture stream holds each step's last frame until the next step has run, fills that
frame's ``next_prob`` / ``next_rank`` from the next step's first token (:func:`~llmri.readouts.fill_next`),
and only then emits it: frames are still appended in order, whole, and a frame in the store never
changes. The session's last frame has no next token (NaN / -1). The cost: with ``lens=True`` a
frame reaches the consumer (and the store) one forward later.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ._errors import CaptureError
from .backends.base import Capture
from .decode import Positions
from .frame import READOUT_DTYPES, AttentionRow, LensRow, fit_into
from .readouts import ATTN_TOP_K, LENS_TOP_K, attention_readout, check_lens_head, fill_next, logit_lens

#: Rows the lens's self-check compares on the first prefill step.
CHECK_ROWS = 8


def check_attention_k(attention_k: Any) -> int | str:
    """``attention_k`` checked: a whole number >= 1, or ``"full"`` (every position so far)."""
    if attention_k == "full":
        return "full"
    if isinstance(attention_k, bool) or not isinstance(attention_k, (int, np.integer)) or attention_k < 1:
        raise CaptureError(f"attention_k must be a whole number >= 1 or 'full', got {attention_k!r}")
    return int(attention_k)


def attention_heads(capture: Capture) -> int:
    """The number of attention heads of the model ``capture`` runs, from its config."""
    cfg = getattr(capture.torch_module(), "config", None)
    text = getattr(cfg, "get_text_config", None)
    if callable(text):
        cfg = text()
    for key in ("num_attention_heads", "n_head", "n_heads", "num_heads"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise CaptureError("cannot tell how many attention heads the model has (no num_attention_heads in its config)")


#: What ``lens_dtype`` takes: the model's float32 path, or a copy of the unembedding in lower precision.
LENS_DTYPES = ("float32", "bfloat16", "float16")


def check_lens_dtype(lens_dtype: Any) -> str:
    """``lens_dtype`` checked (``None`` is ``"float32"``: the exact lens)."""
    if lens_dtype is None:
        return "float32"
    if lens_dtype not in LENS_DTYPES:
        raise CaptureError(f"lens_dtype must be one of {', '.join(LENS_DTYPES)}, got {lens_dtype!r}")
    return str(lens_dtype)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _padded(a: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``a`` as the readout dtype of field ``name``, padded to ``shape`` with -1 / NaN."""
    dtype = READOUT_DTYPES[name]
    if a.shape == shape:
        return a.astype(dtype, copy=False)
    out: np.ndarray = np.full(shape, -1 if dtype is np.int32 else np.nan, dtype=dtype)
    fit_into(out, a)
    return out


class StepReadouts:
    """What the capture stream computes from each step besides tiles and statistics.

    Built in the stream's constructor, so whatever cannot work fails before generation: the lens
    needs :meth:`~llmri.backends.base.Capture.lens_head` (and the ``resid`` signal), attention a
    backend that ``supports_attention`` and a model config that names its heads.
    """

    def __init__(
        self,
        capture: Capture,
        *,
        lens: bool,
        attention: bool,
        attention_k: int | str = ATTN_TOP_K,
        n_positions: int = 0,
        piece: Callable[[int], str] | None = None,
        lens_dtype: str | None = None,
    ) -> None:
        self.lens = bool(lens)
        self.piece = piece  # a token's text (cached per id: TextCodec.piece), for the lens's top_text
        self.attention = bool(attention)
        self.n_layers = capture.n_layers
        self.head = capture.lens_head() if self.lens else None
        self.lens_dtype = check_lens_dtype(lens_dtype)
        # the head the rows go through: the model's own, or a lower-precision copy (lens_dtype=)
        self.rows_head = self.head
        if self.head is not None and self.lens_dtype != "float32":
            import torch

            self.rows_head = self.head.lowered(getattr(torch, self.lens_dtype))
        self._check_resid: Any = None
        if self.lens and "resid" not in capture.signals:
            raise CaptureError("lens=True reads each layer's residual: add 'resid' to signals")
        self.heads = attention_heads(capture) if self.attention else 0
        self.full = attention_k == "full"
        self.attn_k = int(n_positions) if self.full else int(attention_k)
        self._pending: Any = None
        self._last: LensRow | None = None
        self._checked = False
        if self.attention and self.full:
            rows = int(n_positions)
            size = rows * self.n_layers * self.heads * (self.attn_k * 8 + 8)
            warnings.warn(
                f"attention_k='full' keeps whole attention rows: up to {rows} positions x {self.n_layers} layers x "
                f"{self.heads} heads x {self.attn_k} keys, {_size(size)} ({size} bytes) for this session, in "
                "memory and in the store",
                UserWarning,
                stacklevel=4,
            )

    @property
    def holds_last(self) -> bool:
        """Whether each step's last frame waits for the next step (the lens's next token)."""
        return self.lens

    def meta(self) -> dict[str, Any]:
        """The session meta keys that say which readouts it holds (docs/FORMAT.md, "Readouts")."""
        out: dict[str, Any] = {}
        if self.lens:
            out["lens"] = {"k": LENS_TOP_K, "signal": "resid", "texts": self.piece is not None}
            if self.lens_dtype != "float32":
                out["lens"]["dtype"] = self.lens_dtype
        if self.attention:
            out["attention"] = {"k": self.attn_k, "full": self.full, "heads": self.heads}
        return out

    def rows(self, pos: Positions) -> tuple[list[LensRow | None], list[AttentionRow | None]]:
        """Each position's lens and attention rows (``None`` for a readout that is off). Fills the
        previous step's last lens row now that its next token (``pos.ids[0]``) is known."""
        n = len(pos.ids)
        lens: list[LensRow | None] = [None] * n
        attn: list[AttentionRow | None] = [None] * n
        if self.head is not None:
            lens = list(self._lens_rows(pos))
        if self.attention:
            attn = list(self._attention_rows(pos))
        return lens, attn

    def _lens_rows(self, pos: Positions) -> list[LensRow]:
        resid = pos.acts["resid"]
        n = len(pos.ids)
        head = self.head
        assert head is not None and self.rows_head is not None
        out = logit_lens(resid, self.rows_head, pos.ids[1:], k=LENS_TOP_K)
        if self._pending is not None and self._last is not None:
            if not self._checked:  # the model's own head on the previous step's last position, against its logits
                check_lens_head(head, self._check_resid, pos.pred_logits[:1])
                self._checked = True
                self._check_resid = None
            prob, rank = fill_next(self._pending, pos.ids[0])
            self._last.next_prob[:] = prob
            self._last.next_rank[:] = rank
        elif not self._checked and n >= 2:
            a = max(1, n - CHECK_ROWS)  # pred_logits[j] are the model's logits at position j - 1
            check_lens_head(head, resid[a - 1 : n - 1, -1], pos.pred_logits[a:n])
            self._checked = True
        self._pending = out.pending
        if not self._checked:
            self._check_resid = resid[-1:, -1]
        top_ids = out.top_ids.astype(np.int32)
        next_rank = out.next_rank.astype(np.int32)
        texts = self._texts(top_ids)
        rows = [
            LensRow(
                top_ids[j],
                out.top_probs[j],
                out.next_prob[j].copy(),
                next_rank[j].copy(),
                out.entropy[j],
                None if texts is None else texts[j],
            )
            for j in range(n)
        ]
        self._last = rows[-1] if rows else None
        return rows

    def _texts(self, top_ids: np.ndarray) -> np.ndarray | None:
        """Each id's text (object array of the shape of ``top_ids``): one ``piece`` per distinct id."""
        if self.piece is None:
            return None
        uniq, inv = np.unique(top_ids, return_inverse=True)
        table = np.array([self.piece(int(i)) if i >= 0 else "" for i in uniq.tolist()], dtype=object)
        return table[inv.reshape(top_ids.shape)]

    def _attention_rows(self, pos: Positions) -> list[AttentionRow]:
        if pos.attn_weights is None:
            raise CaptureError("the backend returned no attention weights")
        out = attention_readout(pos.attn_weights, k="full" if self.full else self.attn_k)
        n, _, h, kk = out.top_pos.shape
        if h > self.heads or kk > self.attn_k:
            raise CaptureError(
                f"attention of {h} heads x {kk} positions does not fit the session's {self.heads} x {self.attn_k}"
            )
        top = (n, self.n_layers, self.heads, self.attn_k)
        per = (n, self.n_layers, self.heads)
        pos_a = _padded(out.top_pos, top, "top_pos")
        w_a = _padded(out.top_weight, top, "top_weight")
        ent = _padded(out.entropy, per, "entropy")
        sink = _padded(out.sink, per, "sink")
        return [AttentionRow(pos_a[j], w_a[j], ent[j], sink[j]) for j in range(n)]

    def finish(self) -> None:
        """Drop what waits for a next token that will not come (the session's last position)."""
        self._pending = None
        self._last = None
