"""The viewer: ``create_app(stores)`` builds the FastAPI app, ``serve(app, ...)`` runs it (extra
``[viewer]``); ``view(...)`` does both from a script (``llmri.view``).

Importing this package is cheap: each name loads its module (and FastAPI) when first used, so
``llmri.view`` can name the missing extra in one line instead of failing at import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .encoding import decode_array, encode_array
    from .launch import view
    from .security import SecurityPolicy, ViewerError
    from .serve import serve

__all__ = ["SecurityPolicy", "ViewerError", "create_app", "decode_array", "encode_array", "serve", "view"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("decode_array", "encode_array"):
        from . import encoding

        return getattr(encoding, name)
    if name in ("SecurityPolicy", "ViewerError"):
        from . import security

        return getattr(security, name)
    if name == "serve":
        from .serve import serve

        return serve
    if name == "view":
        from .launch import view

        return view
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
