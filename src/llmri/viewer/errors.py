"""How the viewer answers errors: one table from exception type to status, every answer ``{"error": line}``.

A failure inside the server answers 500 with one generic line; the detail, which may name files, goes
to the ``llmri.viewer`` log (or, for an unexpected exception, to uvicorn's traceback).
"""

from __future__ import annotations

import logging
from typing import Any

from .._errors import LlmriError
from .security import security_headers
from .state import BadRequest, Conflict, NotFound

#: What a 500 says: the detail may name files and stays in the server's log.
INTERNAL_ERROR = "internal error: the viewer could not answer this request (details are in its log)"
log = logging.getLogger("llmri.viewer")


def _answer(message: str, status: int, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _not_found(request: Any, exc: Exception) -> Any:
    return _answer(str(exc), 404)


async def _bad_request(request: Any, exc: Exception) -> Any:
    return _answer(str(exc), 400)


async def _conflict(request: Any, exc: Exception) -> Any:
    return _answer(str(exc), 409)


async def _llmri(request: Any, exc: Exception) -> Any:
    log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return _answer(INTERNAL_ERROR, 500)


async def _crash(request: Any, exc: Exception) -> Any:
    # Starlette answers this outside every middleware (then re-raises, so uvicorn logs the traceback):
    # the response carries the security headers itself.
    return _answer(INTERNAL_ERROR, 500, dict(security_headers()))


async def _http(request: Any, exc: Any) -> Any:
    return _answer(str(exc.detail), exc.status_code)


async def _invalid(request: Any, exc: Any) -> Any:
    where = ", ".join(".".join(str(x) for x in e.get("loc", ())) for e in exc.errors())
    return _answer(f"bad parameter: {where}", 400)


def install_error_handlers(app: Any) -> None:
    """Map every error a route may raise to its answer (the most specific type wins)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    table: dict[type[Exception], Any] = {
        NotFound: _not_found,
        BadRequest: _bad_request,
        Conflict: _conflict,
        LlmriError: _llmri,
        Exception: _crash,
        HTTPException: _http,
        RequestValidationError: _invalid,
    }
    for exc_type, handler in table.items():
        app.add_exception_handler(exc_type, handler)
