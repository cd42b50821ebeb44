"""``WS /api/live``: the live chat socket, served by the app's :class:`~llmri.viewer.live.LiveChat`."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from ..routes import State

router = APIRouter()


@router.websocket("/api/live")
async def live_chat(ws: WebSocket, state: State) -> None:
    await state.live.serve(ws)
