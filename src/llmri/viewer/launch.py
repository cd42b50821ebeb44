"""``llmri.view(...)``: ``llmri view`` from Python, with the model a script already holds."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any

from .._errors import CaptureError, StoreError, require


def view(
    stores: Any,
    *,
    model: Any = None,
    tokenizer: Any = None,
    backend: str | None = None,
    lens: bool = False,
    attention: bool = False,
    directions: Sequence[Any] = (),
    host: str = "127.0.0.1",
    port: int = 8000,
    open_browser: bool = True,
    block: bool = True,
) -> Any:
    """Serve the viewer over ``stores`` on loopback, as ``llmri view`` does.

    ``stores``: a store path or URL, a :class:`~llmri.FrameStore`, or a list of them. With
    ``model`` — anything :func:`llmri.capture` takes: a :class:`~llmri.LoadedModel`, a loaded
    transformers model (its tokenizer from ``tokenizer=`` or its local directory), a ``(model,
    tokenizer)`` pair, or a spec string — the page also has live chat, recorded into the first
    store (created if missing); ``backend``, ``lens`` and ``attention`` as for ``capture``;
    ``directions``: saved direction files its steering panel offers (docs/live.md). The model is used
    as it is: not copied, not moved.

    Blocks until Ctrl+C; ``block=False`` returns at once with a handle whose ``url`` the page is at
    and whose ``close()`` stops it (also a context manager). Needs ``pip install 'llmri[viewer]'``.
    """
    require("fastapi", "viewer")
    require("uvicorn", "viewer")
    from ..store import open_store
    from .app import create_app
    from .serve import serve

    if model is None and (tokenizer is not None or lens or attention or backend or directions):
        raise CaptureError("tokenizer=, backend=, lens=, attention= and directions= are for live chat: give model= too")
    given = list(stores) if isinstance(stores, Sequence) and not isinstance(stores, str) else [stores]
    if not given:
        raise StoreError("llmri.view needs a store to show (a path, a URL or a FrameStore)")
    opened: dict[str, Any] = {}
    for i, st in enumerate(given):
        if isinstance(st, (str, PathLike)):
            try:
                opened[str(st)] = open_store(st, create=model is not None and i == 0)
            except StoreError:
                raise
            except (OSError, ValueError) as exc:
                raise StoreError(f"cannot open store {st}: {exc}") from None
        else:
            opened[getattr(st, "label", None) or f"store {i}"] = st
    live = None
    if model is not None:
        from ..models.wrapping import wrap
        from .live import LiveChat, ModelEngine

        if tokenizer is not None:
            model = wrap(model, tokenizer)
        if (lens or attention) and backend == "llama.cpp":
            raise CaptureError("the llama.cpp engine has no lens or attention readouts: use backend='hf'")
        engine = ModelEngine(model, backend=backend, lens=lens, attention=attention, directions=directions)
        live = LiveChat(engine)
    app = create_app(opened, port=port or None, live=live)
    return serve(app, host, port, open_browser=open_browser, block=block)
