"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, with OpenAI's status codes.

Every failure of a ``/v1`` request is an :class:`APIError` (raised by the request checks, the model
registry and the worker) and answered by :func:`install_error_handlers`' handler; nothing else of a
``/v1`` route reaches the viewer's generic handlers, so a client never sees a traceback.
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import LlmriError, one_line


class APIError(LlmriError):
    """A ``/v1`` request that cannot be served: ``status`` and OpenAI's ``type`` / ``param`` / ``code``."""

    def __init__(
        self, message: str, status: int = 400, *, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(one_line(message))
        self.status, self.type, self.param, self.code = status, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(message, 400, param=param, code=code)


def unauthorized() -> APIError:
    return APIError(
        "Incorrect or missing API key: send 'Authorization: Bearer <key>' (the --api-key llmri serve was started with)",
        401, code="invalid_api_key",
    )  # fmt: skip


def error_response(exc: APIError, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def error_event(exc: APIError) -> bytes:
    """An error after a stream began (its status line is already sent): one SSE ``data:`` event."""
    return f"data: {json.dumps(exc.body())}\n\n".encode()


async def _api_error(request: Any, exc: Exception) -> Any:
    assert isinstance(exc, APIError)
    return error_response(exc)


def install_error_handlers(app: Any) -> None:
    """Answer :class:`APIError` in OpenAI's shape (more specific than the viewer's ``LlmriError`` handler)."""
    app.add_exception_handler(APIError, _api_error)
