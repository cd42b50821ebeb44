"""``WS /api/live``: the live chat socket, one router per :class:`~llmri.viewer.live.LiveChat`.

This module knows nothing of the chat: :meth:`LiveChat.attach` hands it the coroutine that serves
one client, so the chat imports the route and never the other way round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, WebSocket


def live_router(serve: Callable[[WebSocket], Awaitable[None]]) -> APIRouter:
    """A router with ``WS /api/live``, each connection served by ``serve(ws)`` until it disconnects."""
    router = APIRouter()

    @router.websocket("/api/live")
    async def live_chat(ws: WebSocket) -> None:
        await serve(ws)

    return router
