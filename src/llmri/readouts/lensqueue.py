"""The logit lens of positions that arrive a step at a time, computed a batch of positions at once.

A position's lens row is complete only once the token after it is known: for a step's last
position that is the next step's first token. :class:`LensQueue` keeps each position's residual
until then and computes the rows of ``batch`` positions in one call of :func:`logit_lens` (the
unembedding of ``batch x layers`` vectors is one matmul: on a CPU, 8 positions of the bundled
model take ~0.6x the time per position of one, docs/benchmarks.md "Readouts"). The rows are
handed out at once, as placeholders that are filled in place when their batch is computed;
:attr:`LensQueue.done` says up to which position they are complete, and the capture stream emits
a frame only once its row is.

``batch=1`` computes each row as soon as its next token is known: a frame then waits one step,
as it always has with the lens on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..frame import LensRow
from .lens import LENS_TOP_K, check_lens_head, logit_lens

#: Rows the lens's self-check compares on the first prefill step.
CHECK_ROWS = 8


class LensQueue:
    """Lens rows for positions pushed in order (see the module's docstring).

    ``head``: the model's own final norm + unembedding (the self-check runs it once);
    ``rows_head``: the one the rows go through (``head`` itself, or a lower-precision copy);
    ``piece``: a token's text, for ``top_text`` (``None``: no texts).
    """

    def __init__(
        self,
        head: Callable[[Any], Any],
        rows_head: Callable[[Any], Any],
        n_layers: int,
        *,
        batch: int = 1,
        k: int = LENS_TOP_K,
        piece: Callable[[int], str] | None = None,
    ) -> None:
        self.head = head
        self.rows_head = rows_head
        self.n_layers = n_layers
        self.batch = max(1, int(batch))
        self.k = k
        self.piece = piece
        self.vocab = 0
        #: the first position whose row is not complete yet
        self.done = 0
        self._resid: list[Any] = []  # [1, L, d] per waiting position, oldest first
        self._ids: list[int] = []  # their token ids
        self._rows: list[LensRow] = []  # their placeholders
        self._checked = False

    @property
    def waiting(self) -> int:
        """Positions whose rows are handed out but not complete."""
        return len(self._rows)

    def push(self, start: int, ids: list[int], resid: Any, pred_logits: Any) -> list[LensRow]:
        """The rows of positions ``start ..`` (``ids``, their ``resid`` ``[n, L, d]``, and the
        model's logits ``pred_logits`` ``[n, vocab]`` that predicted them): placeholders, filled
        when their batch is computed. Computes every batch that is due now."""
        n = len(ids)
        if n == 0:
            return []
        if not self._rows:
            self.done = start
        if not self._checked:
            self._check(resid, pred_logits)
        rows = [self._placeholder() for _ in range(n)]
        self._resid += list(resid.detach().clone().split(1))
        self._ids += [int(i) for i in ids]
        self._rows += rows
        known = len(self._rows) - 1  # every waiting position but the newest has its next token
        if known >= self.batch:
            self._compute(known)
        return rows

    def flush(self, *, last: bool) -> None:
        """Compute every waiting row whose next token is known, and with ``last`` the newest one
        too (the session's last position: no next token, NaN / -1)."""
        if self._rows:
            self._compute(len(self._rows) if last else len(self._rows) - 1)

    def _check(self, resid: Any, pred_logits: Any) -> None:
        """The model's own head at the last layer against its logits, once: on the prefill's
        positions, or (a one-position prompt) on the previous position with this step's logits."""
        n = int(resid.shape[0])
        if n >= 2:
            a = max(1, n - CHECK_ROWS)  # pred_logits[j] are the model's logits at position j - 1
            check_lens_head(self.head, resid[a - 1 : n - 1, -1], pred_logits[a:n])
            self._checked = True
        elif self._resid:
            check_lens_head(self.head, self._resid[-1][:, -1], pred_logits[:1])
            self._checked = True

    def _placeholder(self) -> LensRow:
        L, k = self.n_layers, self.k
        return LensRow(
            np.full((L, k), -1, dtype=np.int32),
            np.full((L, k), np.nan, dtype=np.float32),
            np.full(L, np.nan, dtype=np.float32),
            np.full(L, -1, dtype=np.int32),
            np.full(L, np.nan, dtype=np.float32),
            None if self.piece is None else np.full((L, k), "", dtype=object),
        )

    def _compute(self, m: int) -> None:
        """Fill the rows of the ``m`` oldest waiting positions and drop them from the queue."""
        if m <= 0:
            return
        import torch

        resid = torch.cat(self._resid[:m]) if m > 1 else self._resid[0]
        next_ids = self._ids[1 : m + 1]  # m ids, or m - 1 when the newest position is included
        out = logit_lens(resid, self.rows_head, next_ids, k=self.k, vocab=self.vocab)
        self.vocab = out.vocab
        texts = self._texts(out.top_ids)
        for j, row in enumerate(self._rows[:m]):
            row.top_ids[:] = out.top_ids[j]
            row.top_probs[:] = out.top_probs[j]
            row.next_prob[:] = out.next_prob[j]
            row.next_rank[:] = out.next_rank[j]
            row.entropy[:] = out.entropy[j]
            if texts is not None and row.top_text is not None:
                row.top_text[:] = texts[j]
        del self._resid[:m], self._ids[:m], self._rows[:m]
        self.done += m

    def _texts(self, top_ids: np.ndarray) -> np.ndarray | None:
        """Each id's text (object array of the shape of ``top_ids``): one ``piece`` per distinct id."""
        if self.piece is None:
            return None
        uniq, inv = np.unique(top_ids, return_inverse=True)
        table = np.array([self.piece(int(i)) if i >= 0 else "" for i in uniq.tolist()], dtype=object)
        return table[inv.reshape(top_ids.shape)]
