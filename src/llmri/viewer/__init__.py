"""The viewer: ``create_app(stores)`` builds the FastAPI app, ``serve(app, ...)`` runs it (extra ``[viewer]``)."""

from __future__ import annotations

from .app import create_app
from .encoding import decode_array, encode_array
from .security import SecurityPolicy, ViewerError
from .serve import serve

__all__ = ["SecurityPolicy", "ViewerError", "create_app", "decode_array", "encode_array", "serve"]
