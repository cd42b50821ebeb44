"""``WS /api/live``: the live chat socket, served by the app's :class:`~llmri.viewer.live.LiveChat`."""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, WebSocket

from ..routes import State
from .chat import LiveChat

router = APIRouter()


@router.websocket("/api/live")
async def live_chat(ws: WebSocket, state: State) -> None:
    # Only LiveChat.attach includes this router, so the app's plug-in is that LiveChat.
    await cast(LiveChat, state.live).serve(ws)
