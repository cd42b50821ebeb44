"""One model, one generation at a time: requests wait in a queue for the worker thread, which records
each as a session through :class:`~llmri.capture.stream.CaptureStream` and hands the answer back to
the request's event loop piece by piece.

Batching (issue 21's ``capture_many``) slots in at :meth:`ModelWorker._loop`: take several queued
jobs at once and generate them together, each still its own session.
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
from ..capture.stream import CaptureStream
from .answer import Answer, Piece
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
    """One request's generation. Created on the event loop; :meth:`run` runs on the worker thread."""

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

    def _open(self) -> ServeStream:
        engine, req = self.served.engine, self.req
        tok = getattr(engine.model, "tokenizer", None)
        prompt, chat = self._prompt(tok)
        if chat:
            self.meta["messages"] = req.prompt
        elif req.kind == "chat":  # rendered with tools: the session still shows the conversation
            self.meta.update(messages=req.prompt, chat=True)
        # checked before a session exists: the prompt's length against the model's context
        n_prompt = len(TextCodec(tok).encode(prompt, chat)[0])
        limit = getattr(getattr(engine.model, "config", None), "max_position_embeddings", None)
        assert req.max_tokens is not None
        if isinstance(limit, int) and n_prompt + req.max_tokens > limit:
            raise APIError(
                f"This model's maximum context length is {limit} tokens; the prompt has {n_prompt} and "
                f"max_tokens asks for {req.max_tokens} more", 400, param="messages", code="context_length_exceeded",
            )  # fmt: skip
        options = engine.options.replace(**self.served.options) if self.served.options else engine.options
        return ServeStream(
            engine.model, prompt, options, store=self.store, meta=self.meta, chat=chat,
            max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
            stop=tuple(req.stop), ignore_eos=req.ignore_eos,
        )  # fmt: skip

    def run(self) -> None:
        """Generate the answer (on the worker thread), posting its events; never raises."""
        try:
            self._run()
        finally:
            with self._lock:
                self.finished = True

    def _run(self) -> None:
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
    """The thread that runs :class:`Job` s one after another (the model is never shared by two)."""

    def __init__(self, max_queue: int = 256) -> None:
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.current: Job | None = None
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
        while (job := self.jobs.get()) is not None:
            self.current = job
            job.run()
            self.current = None
            self.done += 1

    def close(self) -> None:
        """Stop: the queued requests are dropped, the running one is stopped (its session closed
        ``complete``, ``finish_reason`` ``disconnected``), then the thread ends."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
        current = self.current
        if current is not None:
            current.cancel()
        self.jobs.put(None)
        self.thread.join(timeout=30)
