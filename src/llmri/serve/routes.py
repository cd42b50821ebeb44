"""The ``/v1`` router: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``.

Each request is read (size-limited), checked (:mod:`.schema`), looked up (:mod:`.registry`), queued
as a :class:`~.worker.Job` and answered from its events (:mod:`.responses`). A client that goes
away mid-stream cancels its job: the generation stops and the session is kept, ``finish_reason``
``disconnected``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request as HTTPRequest

from .errors import APIError, error_response
from .responses import Shape, chunks, collect
from .schema import Request, check_limits, parse_chat, parse_completion
from .worker import Job

if TYPE_CHECKING:
    from fastapi import APIRouter

    from .app import ServeState

#: the paths this router answers, for a 405 (not a 404) on the wrong method
PATHS = ("/v1/models", "/v1/chat/completions", "/v1/completions")


async def read_body(request: HTTPRequest, limit: int) -> bytes:
    """The body, or 413 once it is over ``limit`` bytes (announced or sent)."""
    too_big = APIError(f"the request body is over this server's limit of {limit} bytes", 413, code="request_too_large")
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise too_big
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_big
    return bytes(body)


def router(state: ServeState) -> APIRouter:
    from fastapi import APIRouter
    from starlette.responses import JSONResponse, StreamingResponse

    r = APIRouter()

    class Streamed(StreamingResponse):
        """Cancels its job however the response ends (finished, or the client went away)."""

        job: Job

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.job.cancel()  # a no-op for a job that has finished

    @r.get("/v1/models", include_in_schema=False)
    async def models() -> Any:
        return JSONResponse({"object": "list", "data": state.registry.cards()})

    async def answer(request: HTTPRequest, parse: Callable[[bytes], Request]) -> Any:
        req = parse(await read_body(request, state.max_body))
        served = state.registry.get(req.model)
        problem = check_limits(req, state.max_tokens_limit, state.default_max_tokens)
        if problem is not None:
            raise problem
        meta = {
            "client": req.user,
            "request_id": (request.headers.get("x-request-id") or "")[:128],
            "serve": {
                "endpoint": request.url.path, "model": served.name, "stream": req.stream,
                "sampling": req.sampling(), "tools": req.tools, "ignored": req.ignored, **served.meta,
            },
        }  # fmt: skip
        job = Job(req, served, state.store, meta)
        state.worker.submit(job)
        shape = Shape(req, job)
        if not req.stream:
            return JSONResponse(await collect(shape, job), headers=_headers(shape))
        # the first event (started, or an error before any session) decides the status line
        while True:
            try:
                ev = await asyncio.wait_for(job.events.get(), timeout=1.0)
                break
            except TimeoutError:
                if await request.is_disconnected():  # left while queued: never generated
                    job.cancel()
        if ev.kind == "error":
            assert ev.error is not None
            raise ev.error
        if ev.kind == "done":  # cancelled while queued
            return JSONResponse({}, status_code=499)
        shape.start(ev.session)
        resp = Streamed(chunks(shape, job), media_type="text/event-stream", headers=_headers(shape))
        resp.job = job
        return resp

    def _headers(shape: Shape) -> dict[str, str]:
        sid = shape.id.split("-", 1)[-1]
        return {"x-llmri-session": f"{state.store_id}/{sid}"} if sid and sid != "none" else {}

    @r.post("/v1/chat/completions", include_in_schema=False)
    async def chat(request: HTTPRequest) -> Any:
        return await answer(request, parse_chat)

    @r.post("/v1/completions", include_in_schema=False)
    async def completions(request: HTTPRequest) -> Any:
        return await answer(request, parse_completion)

    @r.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown(request: HTTPRequest, rest: str) -> Any:
        if request.url.path in PATHS:
            return error_response(
                APIError(f"method {request.method} is not allowed here", 405, code="method_not_allowed")
            )
        return error_response(APIError(f"no such endpoint: /v1/{rest[:100]}", 404, code="unknown_url"))

    return r
