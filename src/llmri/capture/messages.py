"""Chat messages: the one check every way into llmri (capture, chat-only, the live viewer) shares."""

from __future__ import annotations

from typing import Any

from .._errors import CaptureError

#: The roles a message may have: the three every chat template and OpenAI-compatible server reads
#: the same way. A ``tool`` message needs the ``tool_call_id`` (and the assistant's ``tool_calls``)
#: that llmri does not keep, so it is refused rather than sent without them.
ROLES = ("system", "user", "assistant")


def check_messages(messages: Any, *, limit: int | None = None) -> list[dict[str, str]]:
    """Check a conversation and return a clean copy of it.

    Parameters
    ----------
    messages:
        A non-empty list (or tuple) of ``{"role": str, "content": str}`` dicts, ``role`` one of
        :data:`ROLES`. Other keys are dropped.
    limit:
        The most messages allowed (``None``: no limit).

    Returns
    -------
    list of dict
        New ``{"role", "content"}`` dicts, in order; the input is not changed.

    Raises
    ------
    CaptureError
        One line naming the first bad message by its index (``message 2: ...``).
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise CaptureError("messages must be a non-empty list of {role, content}")
    if limit is not None and len(messages) > limit:
        raise CaptureError(f"a conversation holds at most {limit} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise CaptureError(f"message {i} must be {{role: {'|'.join(ROLES)}, content: text}}")
        if m["role"] not in ROLES:
            raise CaptureError(f"message {i}: unknown role {m['role'][:40]!r} (one of {', '.join(ROLES)})")
        out.append({"role": m["role"], "content": m["content"]})
    return out
