"""Requests answered together: the rows of one batch share each forward of the model (the hf backend's
batched forwards, :class:`~llmri.backends.hf.batch.BatchRunner`: left padding, the attention mask,
each row's own positions), while each row stays its own :class:`~llmri.capture.stream.CaptureStream`
on its own thread: its own sampler and seed, stop conditions, readouts, session and stream to its
client, ending on its own.

A row's decode loop asks for each forward through :class:`RowStepper` (``step`` as a backend has it)
and waits; :meth:`BatchGroup.run`, on the worker thread, runs one batched forward once every row
still in the batch has asked or left, and hands each row its slice. A forward therefore never runs
while a row builds its frames (its readouts use the model's own modules), and a row that ends (EOS,
``max_tokens``, a stop string, its client gone) leaves the KV cache before the next one.
"""

from __future__ import annotations

import threading
from typing import Any

from .._errors import CaptureError
from ..backends.base import Step


class RowStepper:
    """Row ``row`` of ``group``: its forwards, answered from the batch's (``backend``: the row's own,
    which the batch may run its forwards on)."""

    def __init__(self, group: BatchGroup, row: int, backend: Any) -> None:
        self.group, self.row, self.backend = group, row, backend

    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True, attention: bool = False) -> Step:
        ids = [int(x) for x in input_ids.reshape(-1).tolist()]
        return self.group.step(self, ids, first=cache is None, attention=attention)


class BatchGroup:
    """The ``n`` rows of one batch (rows ``0 .. n-1``): each row's thread calls :meth:`step` (through
    its :class:`RowStepper`) and :meth:`leave` once it is done, whichever way; :meth:`run` drives the
    forwards until every row has left."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._cond = threading.Condition()
        self._asked: dict[int, tuple[list[int], bool, bool]] = {}  # row -> (ids, first, attention)
        self._results: dict[int, Step | BaseException] = {}
        self._left: set[int] = set()
        self._backend: Any = None
        self._failed: BaseException | None = None

    def stepper(self, row: int, backend: Any) -> RowStepper:
        return RowStepper(self, row, backend)

    def step(self, who: RowStepper, ids: list[int], *, first: bool, attention: bool) -> Step:
        with self._cond:
            if self._failed is not None:
                raise CaptureError(f"the batch failed: {self._failed}")
            if self._backend is None:
                self._backend = getattr(who.backend, "inner", who.backend)
            self._asked[who.row] = (ids, first, attention)
            self._cond.notify_all()
            self._cond.wait_for(lambda: who.row in self._results or self._failed is not None)
            out = self._results.pop(who.row, None)
        if out is None:
            raise CaptureError(f"the batch failed: {self._failed}")
        if isinstance(out, BaseException):
            raise out
        return out

    def leave(self, row: int) -> None:
        with self._cond:
            self._left.add(row)
            self._cond.notify_all()

    def _wait(self, rows: list[int]) -> tuple[list[int], list[tuple[list[int], bool, bool]]]:
        """Once each of ``rows`` has asked or left: those that asked, in order, and what they asked."""
        with self._cond:
            self._cond.wait_for(lambda: all(r in self._asked or r in self._left for r in rows))
            asking = [r for r in rows if r in self._asked]
            return asking, [self._asked.pop(r) for r in asking]

    def _deliver(self, results: dict[int, Step | BaseException]) -> None:
        with self._cond:
            self._results.update(results)
            self._cond.notify_all()

    def run(self) -> None:
        """Drive the batch (on the worker thread) until every row has left; never raises."""
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - every waiting row is told, none waits for ever
            with self._cond:
                self._failed = exc
                self._cond.notify_all()
        with self._cond:
            self._cond.wait_for(lambda: len(self._left) == self.n)

    def _run(self) -> None:
        from ..backends.hf.batch import BatchRunner

        rows, asked = self._wait(list(range(self.n)))
        if not rows:
            return
        bad = [r for r, (ids, first, _) in zip(rows, asked, strict=True) if not first or not ids]
        if bad:  # every row's first forward is its whole prompt (the worker batches short prompts only)
            raise CaptureError("a batched row asked for a forward out of turn")
        attention = any(a for _, _, a in asked)
        try:
            runner = BatchRunner(self._backend)
            step = runner.prefill([ids for ids, _, _ in asked], attention=attention)
        except Exception as exc:  # noqa: BLE001 - each row's session ends with the error
            self._deliver({r: exc for r in rows})
            rows = []
        else:
            self._deliver({r: _prefill_slice(step, i, runner.pad[i]) for i, r in enumerate(rows)})
        while rows:
            asking, asked = self._wait(rows)
            if not asking:
                return
            if any(first or len(ids) != 1 for ids, first, _ in asked):
                raise CaptureError("a batched row asked for more than one new position")
            if asking != rows:  # the rows that ended leave the cache
                runner.keep([rows.index(r) for r in asking])
                rows = asking
            try:
                step = runner.decode([ids[0] for ids, _, _ in asked], attention=attention)
            except Exception as exc:  # noqa: BLE001
                self._deliver({r: exc for r in rows})
                return
            self._deliver({r: _decode_slice(step, j, runner.pad[j]) for j, r in enumerate(rows)})


def _prefill_slice(step: Any, i: int, pad: int) -> Step:
    """Row ``i``'s part of a batched prefill, as a batch-1 :class:`~llmri.backends.base.Step`."""
    attn = (
        None if step.attn_weights is None else [None if w is None else w[i, :, pad:, pad:] for w in step.attn_weights]
    )
    acts = {s: a[i, pad:] for s, a in step.acts.items()}
    return Step(logits=step.logits[i, pad:], acts=acts, cache=True, attn_weights=attn)


def _decode_slice(step: Any, j: int, pad: int) -> Step:
    """Row ``j``'s part of a batched decode step."""
    attn = None if step.attn_weights is None else [None if w is None else w[j, :, :, pad:] for w in step.attn_weights]
    return Step(logits=step.logits[j], acts={s: a[j] for s, a in step.acts.items()}, cache=True, attn_weights=attn)
