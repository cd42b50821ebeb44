"""The viewer's routes, one APIRouter per concern; each reaches the app's state through :data:`State`.

Imported only by :func:`~llmri.viewer.create_app` (after it checked that fastapi is installed).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from ..state import ViewerState, state_of


async def viewer_state(conn: HTTPConnection) -> ViewerState:
    """The serving app's :class:`~llmri.viewer.state.ViewerState` (``conn``: a request or a WebSocket).

    Async so that FastAPI calls it on the event loop rather than through its thread pool.
    """
    return state_of(conn.app)


#: A route parameter ``state: State`` receives the app's ViewerState.
State = Annotated[ViewerState, Depends(viewer_state)]
