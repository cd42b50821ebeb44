"""The readouts of a capture stream, step by step: each position's logit lens and attention rows
(:mod:`llmri.readouts`, computed from the full vectors of one forward), and the lens's wait for
the token after a step's last position.

The token after a step's last position is sampled after that step, and it belongs to the session
only once its own forward has run (a stop, an error or a closed stream may come first). So with the
lens on, a position's lens row is computed once the next step has run
(:class:`~llmri.readouts.lensqueue.LensQueue`), ``lens_batch`` positions at a time, and the
capture stream holds each frame until its row is complete (:attr:`StepReadouts.done`): frames are
still appended in order, whole, and a frame in the store never changes. The session's last frame
has no next token (NaN / -1). The cost: with ``lens=True`` a frame reaches the consumer (and the
store) one forward later, or up to ``lens_batch`` forwards later.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .._errors import CaptureError
from ..backends.base import Backend
from ..frame import READOUT_DTYPES, AttentionRow, FeatureRow, LensRow, ProbeRow, fit_into
from ..readouts import ATTN_TOP_K, LENS_TOP_K, attention_readout
from ..readouts.lensqueue import LensQueue
from ..settings import (  # noqa: F401 - re-exported: older code reads them here
    CAPTURE_LENS_BATCH,
    LENS_DTYPES,
    check_attention_k,
    check_lens_batch,
    check_lens_dtype,
)
from .decode import Positions
from .probes import ProbeStep
from .saes import SAEStep


def attention_heads(capture: Backend) -> int:
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
    needs :meth:`~llmri.backends.base.Backend.lens_head` (and the ``resid`` signal), attention a
    backend that ``supports_attention`` and a model config that names its heads.
    """

    def __init__(
        self,
        capture: Backend,
        *,
        lens: bool,
        attention: bool,
        attention_k: int | str = ATTN_TOP_K,
        n_positions: int = 0,
        piece: Callable[[int], str] | None = None,
        lens_dtype: str | None = None,
        lens_batch: int = 1,
    ) -> None:
        self.lens = bool(lens)
        self.attention = bool(attention)
        self.n_layers = capture.n_layers
        self.lens_dtype = check_lens_dtype(lens_dtype)
        self.queue: LensQueue | None = None
        if self.lens:
            head = capture.lens_head()
            if "resid" not in capture.signals:
                raise CaptureError("lens=True reads each layer's residual: add 'resid' to signals")
            # the head the rows go through: the model's own, or a lower-precision copy (lens_dtype=)
            rows_head = head
            if self.lens_dtype != "float32":
                import torch

                rows_head = head.lowered(getattr(torch, self.lens_dtype))
            self.queue = LensQueue(
                head, rows_head, self.n_layers, batch=check_lens_batch(lens_batch), k=LENS_TOP_K, piece=piece
            )
        self.piece = piece
        self.heads = attention_heads(capture) if self.attention else 0
        self.full = attention_k == "full"
        self.attn_k = int(n_positions) if self.full else int(attention_k)
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
    def done(self) -> int | None:
        """The first position whose lens row is not complete (its frame waits), ``None`` with the lens off."""
        return None if self.queue is None else self.queue.done

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

    #: The capture's SAEs (:class:`~llmri.capture.saes.SAEStep`), set by the stream where it has any.
    sae: SAEStep | None = None

    def sae_rows(self, pos: Positions) -> list[dict[str, FeatureRow] | None]:
        """Each position's SAE features, ``{name: FeatureRow}`` (``None`` without SAEs)."""
        return [None] * len(pos.ids) if self.sae is None else self.sae.rows(pos)

    #: The capture's direction probes (:class:`~llmri.capture.probes.ProbeStep`), set by the stream where it has any.
    probe: ProbeStep | None = None

    def probe_rows(self, pos: Positions) -> list[dict[str, ProbeRow] | None]:
        """Each position's probes, ``{name: ProbeRow}`` (``None`` without probes)."""
        return [None] * len(pos.ids) if self.probe is None else self.probe.rows(pos)

    def rows(self, pos: Positions) -> tuple[list[LensRow | None], list[AttentionRow | None]]:
        """Each position's lens and attention rows (``None`` for a readout that is off). A lens row
        is complete once :attr:`done` has passed its position; pushing this step completes the
        rows waiting for its first token (``lens_batch`` at a time)."""
        n = len(pos.ids)
        lens: list[LensRow | None] = [None] * n
        attn: list[AttentionRow | None] = [None] * n
        if self.queue is not None:
            lens = list(self.queue.push(pos.start, list(pos.ids), pos.acts["resid"], pos.pred_logits))
        if self.attention:
            attn = list(self._attention_rows(pos))
        return lens, attn

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

    def flush(self, *, last: bool) -> None:
        """Complete the waiting lens rows whose next token is known (``last``: the newest one too,
        the session's last position, without a next token)."""
        if self.queue is not None:
            self.queue.flush(last=last)
