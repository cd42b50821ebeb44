"""``WS /api/sessions/{store}/{session}/live``: JSON progress messages while a session records."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from ..._jsonsafe import json_safe
from ..state import NotFound
from . import State

router = APIRouter()


@router.websocket("/api/sessions/{store_id}/{session_id}/live")
async def live_progress(ws: WebSocket, state: State, store_id: str, session_id: str) -> None:
    try:
        r = await asyncio.to_thread(state.reader, store_id, session_id, True)
    except NotFound:
        await ws.close(code=4404, reason="no such session")
        return
    await ws.accept()
    last: tuple[int, str] | None = None
    try:
        while True:
            n, status = len(r), r.status
            if (n, status) != last:
                last = (n, status)
                meta = {"stop_reason": r.meta.get("stop_reason", "")}
                await ws.send_json(json_safe({"type": "progress", "n_frames": n, "status": status, "meta": meta}))
            if status != "recording":
                await ws.close(code=1000)
                return
            await asyncio.sleep(state.poll_interval)
            r = await asyncio.to_thread(state.reader, store_id, session_id, True)
    except (WebSocketDisconnect, RuntimeError):
        return
    except NotFound:
        await ws.close(code=4404)
