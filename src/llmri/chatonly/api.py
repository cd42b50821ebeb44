"""The one-call entry points: :func:`chat_only_stream` and :func:`chat_only`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..store import Session
from .chat import DEFAULT_MAX_NEW_TOKENS, ChatOnlyStream
from .client import DEFAULT_TIMEOUT, ChatOnlyClient


def chat_only_stream(
    url: str,
    messages: Any,
    *,
    model: str | None = None,
    api_key: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    **kw: Any,
) -> ChatOnlyStream:
    """Stream an answer from the OpenAI-compatible server at ``url``, frame by frame.

    ``messages``: a string (one user message) or a list of ``{"role", "content"}`` dicts.
    ``model``, ``api_key``, ``timeout``: see :class:`ChatOnlyClient`. Other keywords
    (``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, ``logprobs``, ``store``,
    ``meta``): see :class:`ChatOnlyStream`. The stream owns its client and closes it when done.
    """
    client = ChatOnlyClient(url, model=model, api_key=api_key, timeout=timeout)
    return ChatOnlyStream(client, messages, _owns_client=True, **kw)


def chat_only(
    url: str,
    messages: Any,
    *,
    model: str | None = None,
    api_key: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = 0,
    stop: Sequence[str] | str | None = None,
    store: Any = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    meta: dict[str, Any] | None = None,
) -> Session:
    """Chat with an OpenAI-compatible server and return the answer as a chat-only
    :class:`~llmri.Session` (no activations; see :mod:`llmri.chatonly` for its rows
    and meta).

    Example: ``llmri.chat_only("http://127.0.0.1:11434/v1", "Why is the sky blue?", model="llama3.2")``.
    With ``store`` (path/URL/FrameStore) the session is also recorded there as it streams.
    Raises :class:`~llmri.CaptureError` (one line) when the server cannot be reached, answers an
    HTTP error, times out, or sends a malformed stream.
    """
    st = chat_only_stream(
        url,
        messages,
        model=model,
        api_key=api_key,
        timeout=timeout,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=stop,
        store=store,
        meta=meta,
    )
    return Session.collect(st)
