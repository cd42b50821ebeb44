"""Requests wait in a queue for the worker thread, which records each as a session through
:class:`~llmri.capture.stream.CaptureStream` and hands the answer back to the request's event loop
piece by piece. The requests queued when the worker takes the next one are answered together where
they can be (:mod:`.batch`: the hf backend, no interventions, a prompt of one prefill chunk; up to
``max_batch``), each still its own session and stream; the others one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .._errors import LlmriError, one_line
from ..capture.codec import TextCodec
from ..capture.decode import PREFILL_CHUNK
from ..capture.stream import CaptureStream
from .answer import Answer, Piece
from .batch import BatchGroup
from .errors import APIError, bad_request
from .registry import ServedModel
from .schema import Request

log = logging.getLogger("llmri.serve")

#: ``stop_reason`` (the capture's) -> OpenAI's ``finish_reason``
FINISH = {"eos": "stop", "stop_string": "stop", "max_new_tokens": "length"}


def finish_reason(stop_reason: str, disconnected: bool) -> str:
    """What the answer's end is called: ``stop``, ``length``, ``disconnected`` (the client left), ``error``."""
    if disconnected:
        return "disconnected"
    if stop_reason.startswith("error"):
        return "error"
    return FINISH.get(stop_reason, "stop")


class ServeStream(CaptureStream):
    """A capture whose session also records how the client's answer ended (``finish_reason``) and how
    many characters of the session's generated text the client got (``answer_chars``)."""

    answer: Answer | None = None
    disconnected = False
    stepper: Any = None  # a row of a batch (:class:`~.batch.RowStepper`); None: the backend itself

    def _stepper(self) -> Any:
        return self.stepper or self.backend

    def _final_meta(self) -> dict[str, Any]:
        end = super()._final_meta()
        end["finish_reason"] = finish_reason(self.stop_reason, self.disconnected)
        end["answer_chars"] = len(self.answer.text) if self.answer is not None else 0
        return end


@dataclass
class Event:
    """What a job tells its request: ``started`` (``session``), ``piece``, ``done`` (``finish``,
    ``usage``) or ``error`` (``error``)."""

    kind: str
    piece: Piece | None = None
    session: str = ""
    finish: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    error: APIError | None = None


class Job:
    """One request's generation. Created on the event loop; :meth:`run` runs on the worker thread (or
    on a thread of its own, as a row of a batch)."""

    def __init__(self, req: Request, served: ServedModel, store: Any, meta: dict[str, Any]) -> None:
        self.req, self.served, self.store, self.meta = req, served, store, meta
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.created = int(time.time())
        self._lock = threading.Lock()
        self._stream: ServeStream | None = None
        self.cancelled = False
        self.finished = False

    def cancel(self) -> None:
        """The client went away: stop generating (thread-safe); the session is kept, marked ``disconnected``."""
        with self._lock:
            if self.finished:
                return
            self.cancelled = True
            st = self._stream
        if st is not None:
            st.disconnected = True
            st.stop()

    def _post(self, ev: Event) -> None:
        if not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, ev)
            except RuntimeError:  # the loop closed: the server is shutting down
                pass

    def _prompt(self, tok: Any) -> tuple[Any, bool]:
        """What the capture encodes, and whether it is chat. Tools go to a chat template that reads them
        (rendered here, as text); a template without them gets the messages alone (``tools_ignored``)."""
        req = self.req
        if req.kind == "completion":
            return req.prompt, False
        template = getattr(tok, "chat_template", None) or ""
        if req.tools and "tools" in template:
            text = tok.apply_chat_template(req.prompt, tools=req.tools, add_generation_prompt=True, tokenize=False)
            return text, False
        if req.tools:
            self.meta["serve"]["tools_ignored"] = True
        return req.prompt, True

    def prepare(self) -> tuple[Any, bool, int]:
        """What the capture encodes, whether it is chat, and its length in tokens; checked against the
        model's context before a session exists (``context_length_exceeded``)."""
        engine, req = self.served.engine, self.req
        tok = getattr(engine.model, "tokenizer", None)
        prompt, chat = self._prompt(tok)
        if chat:
            self.meta["messages"] = req.prompt
        elif req.kind == "chat":  # rendered with tools: the session still shows the conversation
            self.meta.update(messages=req.prompt, chat=True)
        n_prompt = len(TextCodec(tok).encode(prompt, chat)[0])
        limit = getattr(getattr(engine.model, "config", None), "max_position_embeddings", None)
        assert req.max_tokens is not None
        if isinstance(limit, int) and n_prompt + req.max_tokens > limit:
            raise APIError(
                f"This model's maximum context length is {limit} tokens; the prompt has {n_prompt} and "
                f"max_tokens asks for {req.max_tokens} more", 400, param="messages", code="context_length_exceeded",
            )  # fmt: skip
        return prompt, chat, n_prompt

    def batch_key(self) -> int | None:
        """Jobs of one key may share forwards (:mod:`.batch`): the same engine on the hf backend, no
        interventions, a prompt of one prefill chunk; ``None``: this one runs alone."""
        engine = self.served.engine
        if self.cancelled or engine.backend != "hf" or engine.options.interventions or self.served.options:
            return None
        try:
            n_prompt = self.prepare()[2]
        except Exception:  # noqa: BLE001 - it runs alone, and fails there with its own error
            return None
        return id(engine) if 0 < n_prompt <= PREFILL_CHUNK else None

    def _open(self) -> ServeStream:
        engine, req = self.served.engine, self.req
        prompt, chat, _ = self.prepare()
        assert req.max_tokens is not None  # check_limits gave it its default
        options = engine.options.replace(**self.served.options) if self.served.options else engine.options
        return ServeStream(
            engine.model, prompt, options, store=self.store, meta=self.meta, chat=chat,
            max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
            stop=tuple(req.stop), ignore_eos=req.ignore_eos,
        )  # fmt: skip

    def run(self, batch: BatchGroup | None = None, row: int = 0) -> None:
        """Generate the answer (on the worker thread, or a thread of its own as row ``row`` of
        ``batch``), posting its events; never raises."""
        try:
            self._run(batch, row)
        finally:
            with self._lock:
                self.finished = True
            if batch is not None:
                batch.leave(row)

    def _run(self, batch: BatchGroup | None, row: int) -> None:
        self.meta["serve"]["batch"] = batch.n if batch is not None else 1
        if self.cancelled:  # the client left while queued: nothing was generated, nothing is recorded
            self._post(Event("done", finish="disconnected"))
            return
        try:
            stream = self._open()
        except APIError as exc:
            self._post(Event("error", error=exc))
            return
        except LlmriError as exc:
            self._post(Event("error", error=bad_request(str(exc))))
            return
        except Exception as exc:  # noqa: BLE001 - a failing model must not take the server down
            log.exception("llmri serve: a request could not start")
            self._post(
                Event("error", error=APIError(f"the model failed: {type(exc).__name__}", 500, type="server_error"))
            )
            return
        if batch is not None:
            stream.stepper = batch.stepper(row, stream.backend)
        answer = stream.answer = Answer(
            self.req.stop, () if self.req.ignore_eos else stream.codec.eos_ids, stream.codec.special_ids
        )
        with self._lock:
            self._stream = stream
            if self.cancelled:
                stream.disconnected = True
                stream.stop()
        self._post(Event("started", session=stream.session_id or ""))
        n_gen = 0
        try:
            with stream:
                for frame in stream:
                    if frame.token.role != "generated":
                        continue
                    n_gen += 1
                    piece = answer.push(frame.token)
                    if piece.text or piece.tokens:
                        self._post(Event("piece", piece=piece))
            last = answer.finish()
            if last.text or last.tokens:
                self._post(Event("piece", piece=last))
            usage = {"prompt_tokens": len(stream.prompt_ids), "completion_tokens": n_gen}
            usage["total_tokens"] = usage["prompt_tokens"] + n_gen
            self._post(Event("done", finish=finish_reason(stream.stop_reason, stream.disconnected), usage=usage))
        except Exception as exc:  # noqa: BLE001 - the session is closed 'interrupted' by the stream itself
            log.error("llmri serve: generation failed: %s: %s", type(exc).__name__, one_line(exc))
            self._post(
                Event("error", error=APIError(f"generation failed: {one_line(exc, 200)}", 500, type="server_error"))
            )


class ModelWorker:
    """The thread that runs :class:`Job` s: the requests queued when it takes the next one, up to
    ``max_batch``, in batches of one :meth:`Job.batch_key` (:mod:`.batch`), the others one after
    another; ``max_batch=1``: one at a time. The model is never in two forwards at once."""

    def __init__(self, max_queue: int = 256, max_batch: int = 8) -> None:
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.max_batch = max(1, max_batch)
        self.taken: list[Job] = []  # the jobs of this round, taken from the queue
        self.done = 0
        self.thread = threading.Thread(target=self._loop, name="llmri-serve", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; 503 in OpenAI's shape when the queue is full."""
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise APIError(
                "the server is busy: too many requests are waiting for the model (try again)", 503, type="server_error"
            ) from None

    def _loop(self) -> None:
        stopping = False
        while not stopping and (job := self.jobs.get()) is not None:
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    more = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                jobs.append(more)
            self.taken = jobs
            for group in groups(jobs) if len(jobs) > 1 else [jobs]:
                self._run(group)
            self.taken = []

    def _run(self, group: list[Job]) -> None:
        if len(group) == 1:
            group[0].run()
        else:
            batch = BatchGroup(len(group))
            rows = [
                threading.Thread(target=job.run, args=(batch, i), name=f"llmri-serve-row{i}", daemon=True)
                for i, job in enumerate(group)
            ]
            for t in rows:
                t.start()
            batch.run()
            for t in rows:
                t.join()
        self.done += len(group)

    def close(self) -> None:
        """Stop: the queued requests are dropped, the running ones are stopped (their sessions closed
        ``complete``, ``finish_reason`` ``disconnected``), then the thread ends."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
        for job in list(self.taken):
            job.cancel()
        self.jobs.put(None)
        self.thread.join(timeout=30)


def groups(jobs: list[Job]) -> list[list[Job]]:
    """``jobs`` in the batches they run in, in the order they came: those of one :meth:`Job.batch_key`
    together, each of the others alone."""
    out: list[list[Job]] = []
    by_key: dict[int, list[Job]] = {}
    for job in jobs:
        key = job.batch_key()
        if key is None:
            out.append([job])
        elif key in by_key:
            by_key[key].append(job)
        else:
            by_key[key] = [job]
            out.append(by_key[key])
    return out
