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

import logging
import threading
from dataclasses import dataclass
from typing import Any

from .._errors import CaptureError, one_line
from ..backends.base import Step

log = logging.getLogger("llmri.serve")


@dataclass
class Ask:
    """A row's request for one forward: what its decode loop passed to ``step``."""

    who: RowStepper
    input_ids: Any  # Tensor [1, n]
    cache: Any  # None for the prompt; then what the previous Step returned
    logits: bool
    attention: bool

    @property
    def ids(self) -> list[int]:
        return [int(x) for x in self.input_ids.reshape(-1).tolist()]


class RowStepper:
    """Row ``row`` of ``group``: its forwards, answered from the batch's (``backend``: the row's own,
    which the batch runs its forwards on)."""

    def __init__(self, group: BatchGroup, row: int, backend: Any) -> None:
        self.group, self.row, self.backend = group, row, backend

    def step(self, input_ids: Any, cache: Any = None, *, logits: bool = True, attention: bool = False) -> Step:
        return self.group.step(Ask(self, input_ids, cache, logits, attention))


class BatchGroup:
    """The ``n`` rows of one batch (rows ``0 .. n-1``): each row's thread calls :meth:`step` (through
    its :class:`RowStepper`) and :meth:`leave` once it is done, whichever way; :meth:`run` drives the
    forwards until every row has left. A model the batched forward cannot run (no KV cache, say) is
    run one row's forward after another instead, each on the row's own backend and cache: the same
    answers, none shared."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._cond = threading.Condition()
        self._asked: dict[int, Ask] = {}
        self._results: dict[int, Step | BaseException] = {}
        self._left: set[int] = set()
        self._failed: BaseException | None = None

    def stepper(self, row: int, backend: Any) -> RowStepper:
        return RowStepper(self, row, backend)

    def step(self, ask: Ask) -> Step:
        row = ask.who.row
        with self._cond:
            if self._failed is None:
                self._asked[row] = ask
                self._cond.notify_all()
                self._cond.wait_for(lambda: row in self._results or self._failed is not None)
            out = self._results.pop(row, None)
        if out is None:
            raise CaptureError(f"the batch failed: {self._failed}")
        if isinstance(out, BaseException):
            raise out
        return out

    def leave(self, row: int) -> None:
        with self._cond:
            self._left.add(row)
            self._cond.notify_all()

    def _wait(self, rows: list[int]) -> tuple[list[int], list[Ask]]:
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

        rows, asks = self._wait(list(range(self.n)))
        if not rows:
            return
        if any(a.cache is not None or not a.ids for a in asks):
            raise CaptureError("a batched row asked for a forward out of turn")
        attention = any(a.attention for a in asks)
        try:
            first = asks[0].who.backend
            runner = BatchRunner(getattr(first, "inner", first))
            step = runner.prefill([a.ids for a in asks], attention=attention)
        except Exception as exc:  # noqa: BLE001 - one forward at a time instead
            log.warning("llmri serve: these requests cannot share forwards (%s): one at a time", one_line(exc))
            self._alone(rows, asks)
            return
        self._deliver({r: _prefill_slice(step, i, runner.pad[i]) for i, r in enumerate(rows)})
        while rows:
            asking, asks = self._wait(rows)
            if not asking:
                return
            if any(a.cache is not True or len(a.ids) != 1 for a in asks):
                raise CaptureError("a batched row asked for more than one new position")
            if asking != rows:  # the rows that ended leave the cache
                runner.keep([rows.index(r) for r in asking])
                rows = asking
            try:
                step = runner.decode([a.ids[0] for a in asks], attention=attention)
            except Exception as exc:  # noqa: BLE001 - each row's session ends with the error
                self._deliver({r: exc for r in rows})
                return
            self._deliver({r: _decode_slice(step, j, runner.pad[j]) for j, r in enumerate(rows)})

    def _alone(self, rows: list[int], asks: list[Ask]) -> None:
        """Each row's forwards on its own backend and cache, one after another, until every row has left."""
        while rows:
            out: dict[int, Step | BaseException] = {}
            for r, a in zip(rows, asks, strict=True):
                try:
                    out[r] = a.who.backend.step(a.input_ids, a.cache, logits=a.logits, attention=a.attention)
                except Exception as exc:  # noqa: BLE001 - that row's session ends with the error
                    out[r] = exc
            self._deliver(out)
            rows, asks = self._wait(rows)


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
