"""Batched capture of one batch of prompts: :class:`BatchCapturer` (one model, one settings object)
and each row's own frames (:class:`_Row`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .._errors import CaptureError
from ..frame import Frame
from ..settings import CAPTURE_LENS_BATCH, CaptureSettings
from .prompts import PromptRow


class _Row:
    """One prompt of a batch: its own detokenizer, sampler, stop conditions, readouts and frames,
    fed the row's slice of each batched forward (what :class:`~llmri.capture.CaptureStream` does
    with a batch-1 forward)."""

    def __init__(self, cap: BatchCapturer, row: PromptRow, ids: list[int], messages: Any) -> None:
        import torch

        from ..capture.decode import Detokenizer
        from ..capture.frames import StepFrames
        from ..capture.readouts import StepReadouts

        t = cap.template
        o = cap.options
        self.row, self.ids, self.messages = row, ids, messages
        self.readouts = StepReadouts(
            t.backend,
            lens=o.lens,
            attention=o.attention,
            attention_k=o.attention_k,
            n_positions=len(ids) + t.settings.max_new_tokens,
            piece=t.codec.piece,
            lens_dtype=o.lens_dtype,
            lens_batch=o.lens_batch or CAPTURE_LENS_BATCH,
        )
        self.readouts.sae, self.readouts.probe = t.readouts.sae, t.readouts.probe  # stateless: shared by the rows
        self.frames = StepFrames(
            t.signals, t.reducer, t.codec.piece, self.readouts, defer=False, frame_dtype=t.frames.frame_dtype
        )
        self.detok = Detokenizer(t.codec.decode)
        self.gen = torch.Generator().manual_seed(int(t.settings.seed))
        self.out: list[Frame] = []
        self.prev: Any = None  # the logits that predict the next token
        self.new = 0  # tokens generated so far
        self.done = False
        self.stop_reason = ""
        self._text = ""
        self._tail = max((len(x) for x in t.settings.stop), default=0) + 32
        self.cap_eos, self.cap_stop, self.ignore_eos = t.codec.eos_ids, t.settings.stop, t.settings.ignore_eos

    def feed(self, pos: Any) -> None:
        job = self.frames.launch(pos, self.detok)
        if pos.role == "generated":
            eos, stops = self.cap_eos, self.cap_stop
            for tid, text in zip(pos.ids, job.texts, strict=True):
                self._text = (self._text + text)[-self._tail * 2 :]
                if tid in eos and not self.ignore_eos:
                    self.stop_reason = "eos"
                elif stops and any(x in self._text for x in stops):
                    self.stop_reason = "stop_string"
                    self.done = True
        self.out += self.frames.finish(job)

    def end(self) -> list[Frame]:
        self.readouts.flush(last=True)
        self.frames.close()
        if not self.stop_reason:
            self.stop_reason = "max_new_tokens"
        return self.out


class BatchCapturer:
    """A model and one settings object, capturing prompts in batches (the unit a worker holds).

    Every check of the settings happens here, before a prompt is generated (through a
    :class:`~llmri.capture.CaptureStream` built once as the template of every row's session meta).
    With ``batch_size > 1`` on the hf backend the rows of a batch share each forward (left padding,
    the attention mask, each row's own position ids; a row leaves as it ends); interventions and the
    other backends capture one prompt at a time (:func:`llmri.stream`), the same frames.
    """

    def __init__(
        self, model: Any, settings: CaptureSettings | None = None, *, batch_size: int = 16, tokenizer: Any = None
    ) -> None:
        from ..capture.stream import CaptureStream

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise CaptureError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        o = settings or CaptureSettings()
        if o.lens_batch is None:
            o = o.replace(lens_batch=CAPTURE_LENS_BATCH)
        self.options = o
        self.template = CaptureStream(model, "llmri", o, tokenizer=tokenizer)
        self.template.close()
        self.model = self.template.model
        self.batch_size = batch_size
        self.batched = batch_size > 1 and self.template.backend_name == "hf" and not o.interventions
        self.fingerprint = str(getattr(self.model, "fingerprint", "") or "")
        self._settings_key = {k: v for k, v in o.to_dict().items() if k not in ("lens_batch",)}
        self.runner: Any = None
        if self.batched:
            from ..backends.hf.batch import BatchRunner

            be = self.template.backend
            inner = getattr(be, "inner", be)  # layers=: a LayerSubset of the hf backend
            self.runner = BatchRunner(inner, getattr(be, "indices", None))  # type: ignore[arg-type]

    def key(self, row: PromptRow) -> str:
        """The key that marks ``row`` done in a store (:meth:`PromptRow.key`)."""
        return row.key(self._settings_key, self.fingerprint)

    def encode(self, row: PromptRow) -> tuple[list[int], Any]:
        ids, messages = self.template.codec.encode(row.prompt, self.options.chat)
        limit = self.template._max_positions
        if not ids:
            raise CaptureError(f"{row.where}: the prompt is empty")
        if limit and len(ids) + self.template.settings.max_new_tokens > limit:
            raise CaptureError(
                f"{row.where}: prompt ({len(ids)} tokens) + max_new_tokens exceeds the model's context of {limit}"
            )
        return ids, messages

    def meta(self, row: PromptRow, messages: Any, readouts: Any = None) -> dict[str, Any]:
        """The session meta of ``row``: the template's, with the row's prompt, readouts and study keys."""
        meta = {k: v for k, v in self.template.meta.items() if k not in ("id", "stop_reason", "overflow")}
        meta.update(
            prompt=row.prompt if isinstance(row.prompt, str) else None,
            messages=messages,
            chat=messages is not None,
        )
        if readouts is not None:
            meta.update(readouts.meta())
        meta["study"] = {"key": self.key(row), "id": row.id, "row": row.index, "metadata": row.metadata}
        return meta

    # -- capture -------------------------------------------------------------------------
    def capture(self, rows: list[PromptRow]) -> Iterator[tuple[PromptRow, dict[str, Any], list[Frame]]]:
        """Capture ``rows`` (at most :attr:`batch_size`; all in one batch where batched) and yield
        ``(row, meta, frames)`` per row as it ends (a row that ends early comes first)."""
        if not self.batched:
            for row in rows:
                yield self._one(row)
            return
        yield from self._batch(rows)

    def _one(self, row: PromptRow) -> tuple[PromptRow, dict[str, Any], list[Frame]]:
        from ..capture.stream import CaptureStream

        st = CaptureStream(self.model, row.prompt, self.options)
        frames = list(st)
        meta = self.meta(row, st.messages, st.readouts)
        meta.update(stop_reason=st.meta.get("stop_reason", ""), overflow=st.meta.get("overflow"))
        return row, meta, frames

    def _batch(self, rows: list[PromptRow]) -> Iterator[tuple[PromptRow, dict[str, Any], list[Frame]]]:
        import torch

        from ..capture.decode import Positions, sample

        t, o = self.template, self.options
        gen = t.settings
        states = []
        for row in rows:
            ids, messages = self.encode(row)
            st = _Row(self, row, ids, messages)
            states.append(st)
        runner = self.runner
        step = runner.prefill([s.ids for s in states], attention=o.attention)
        for r, st in enumerate(states):
            p = runner.pad[r]
            logits = step.logits[r, p:]
            pred = torch.cat([torch.full_like(logits[:1], float("nan")), logits[:-1]], dim=0)
            attn = (
                None
                if step.attn_weights is None
                else [None if w is None else w[r, :, p:, p:] for w in step.attn_weights]
            )
            st.prev = logits[-1]
            st.feed(Positions(0, list(st.ids), "prompt", {s: a[r, p:] for s, a in step.acts.items()}, pred, attn))
            st.done = st.done or gen.max_new_tokens == 0
        active = list(range(len(states)))
        while active:
            alive = [k for k in active if not states[k].done]
            for k in active:
                if states[k].done:
                    yield self._finished(states[k])
            if not alive:
                return
            runner.keep([active.index(k) for k in alive])
            active = alive
            toks, lasts = [], []
            for k in active:
                st = states[k]
                tok = sample(st.prev, gen, st.gen)
                toks.append(tok)
                lasts.append(st.new == gen.max_new_tokens - 1 or (tok in t.codec.eos_ids and not gen.ignore_eos))
            step = runner.decode(toks, attention=o.attention)
            for j, k in enumerate(active):
                st = states[k]
                p = runner.pad[j]
                attn = (
                    None
                    if step.attn_weights is None
                    else [None if w is None else w[j, :, :, p:] for w in step.attn_weights]
                )
                pos = Positions(
                    len(st.ids) + st.new,
                    [toks[j]],
                    "generated",
                    {s: a[j] for s, a in step.acts.items()},
                    st.prev[None],
                    attn,
                )
                st.prev = step.logits[j, -1]
                st.new += 1
                st.feed(pos)
                if lasts[j]:
                    st.done = True

    def _finished(self, st: _Row) -> tuple[PromptRow, dict[str, Any], list[Frame]]:
        frames = st.end()
        st.frames.overflow.warn()
        meta = self.meta(st.row, st.messages, st.readouts)
        meta.update(stop_reason=st.stop_reason, overflow=st.frames.overflow.meta())
        return st.row, meta, frames

    def close(self) -> None:
        """Free the backend."""
        self.template.backend.close()
