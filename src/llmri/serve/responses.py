"""OpenAI's response objects from a job's events: ``chat.completion`` and its ``chat.completion.chunk``
stream, ``text_completion`` (both ways), as JSON and as server-sent events (``data: {...}``, then
``data: [DONE]``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ..frame import Token
from .answer import Piece, logprob_entry
from .errors import APIError, error_event
from .schema import Request
from .worker import Event, Job


class Shape:
    """The objects of one request: its ``id``, ``object`` names and the ``logprobs`` of each piece."""

    def __init__(self, req: Request, job: Job) -> None:
        self.req, self.job = req, job
        self.chat = req.kind == "chat"
        self.id = ""
        self.offset = 0  # characters released so far (completions' text_offset)

    def start(self, session: str) -> None:
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + (session or "none")

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.job.created, "model": self.job.served.name}

    def logprobs(self, tokens: list[Token]) -> dict[str, Any] | None:
        top = self.req.logprobs
        if top is None:
            return None
        if self.chat:
            return {"content": [logprob_entry(t, top) for t in tokens]}
        entries = [logprob_entry(t, top) for t in tokens]
        offsets = []
        for t in tokens:
            offsets.append(self.offset)
            self.offset += len(t.text)
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{a["token"]: a["logprob"] for a in e["top_logprobs"]} for e in entries] if top else None,
            "text_offset": offsets,
        }

    def whole(self, text: str, tokens: list[Token], finish: str, usage: dict[str, int]) -> dict[str, Any]:
        """The non-streamed answer."""
        choice: dict[str, Any] = {"index": 0, "logprobs": self.logprobs(tokens), "finish_reason": finish}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text, "refusal": None}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage}
        choice["text"] = text
        return {**self._head("text_completion"), "choices": [choice], "usage": usage}

    def chunk(self, piece: Piece | None, finish: str | None = None, first: bool = False) -> dict[str, Any]:
        """One streamed chunk (``piece`` None: the closing chunk with ``finish_reason``)."""
        lp = self.logprobs(piece.tokens) if piece is not None else None
        choice: dict[str, Any] = {"index": 0, "logprobs": lp, "finish_reason": finish}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if piece is not None:
                delta["content"] = piece.text
            choice["delta"] = delta
            out = {**self._head("chat.completion.chunk"), "choices": [choice]}
        else:
            choice["text"] = piece.text if piece is not None else ""
            out = {**self._head("text_completion"), "choices": [choice]}
        if self.req.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage}


def sse(obj: dict[str, Any] | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, allow_nan=False)}\n\n".encode()


async def collect(shape: Shape, job: Job) -> dict[str, Any]:
    """The whole answer (non-streamed); an error raises its :class:`~.errors.APIError`."""
    text, tokens = [], []
    while True:
        ev: Event = await job.events.get()
        if ev.kind == "error":
            assert ev.error is not None
            raise ev.error
        if ev.kind == "started":
            shape.start(ev.session)
        elif ev.kind == "piece" and ev.piece is not None:
            text.append(ev.piece.text)
            tokens += ev.piece.tokens
        elif ev.kind == "done":
            return shape.whole("".join(text), tokens, ev.finish, ev.usage)


async def chunks(shape: Shape, job: Job) -> AsyncIterator[bytes]:
    """The streamed answer as SSE bytes (the ``started`` event was consumed by the caller)."""
    yield sse(shape.chunk(None, first=True) if shape.chat else shape.chunk(Piece()))
    while True:
        ev = await job.events.get()
        if ev.kind == "piece" and ev.piece is not None:
            yield sse(shape.chunk(ev.piece))
        elif ev.kind == "error":
            yield error_event(ev.error or APIError("generation failed", 500, type="server_error"))
            break
        elif ev.kind == "done":
            yield sse(shape.chunk(None, finish=ev.finish))
            if shape.req.include_usage:
                yield sse(shape.usage_chunk(ev.usage))
            break
    yield sse("[DONE]")
