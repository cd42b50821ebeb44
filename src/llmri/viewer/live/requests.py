"""The check of a client's ``chat`` message: what may reach an engine, as one-line CaptureErrors."""

from __future__ import annotations

import math
import secrets
from typing import Any

from ..._errors import CaptureError
from ...capture.messages import check_messages
from ...reducers import REDUCERS
from .protocol import MAX_MESSAGES, MAX_NEW_TOKENS


def shown(value: Any, limit: int = 40) -> str:
    """A client's value in an error message: short and one line, never the repr of a huge or deep value."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a JSON {'object' if isinstance(value, dict) else 'array' if isinstance(value, list) else 'value'}"


def _number(settings: dict[str, Any], key: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
    value = settings.get(key, default)
    if value is None or value == "":
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise CaptureError(f"{key} must be a number, got {shown(value)}") from None
    # An int is compared exactly: JSON integers have no size limit, and math.isfinite(10**400) overflows.
    if not (lo <= value <= hi) or (isinstance(value, float) and not math.isfinite(value)):
        raise CaptureError(f"{key} must be between {lo:g} and {hi:g}, got {shown(value)}")
    if integer:
        if value != int(value):
            raise CaptureError(f"{key} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def check_request(data: Any, engine: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Validate a ``chat`` message: ``(messages, settings)``; raises CaptureError with one line."""
    out = check_messages(data.get("messages") if isinstance(data, dict) else None, limit=MAX_MESSAGES)
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        raise CaptureError("the last message must be a non-empty user message")
    raw = data.get("settings") or {}
    if not isinstance(raw, dict):
        raise CaptureError("settings must be an object")
    settings: dict[str, Any] = {
        "max_new_tokens": _number(raw, "max_new_tokens", 128, 1, MAX_NEW_TOKENS, integer=True),
        "temperature": _number(raw, "temperature", 0.0, 0.0, 5.0),
        "top_p": _number(raw, "top_p", 1.0, 0.0, 1.0),
        "seed": _number(raw, "seed", 0, 0, 2**31 - 1, integer=True),
    }
    if settings["top_p"] <= 0:
        raise CaptureError("top_p must be above 0")
    if engine.mode == "model":
        sigs = raw.get("signals") or list(engine.signals)
        if isinstance(sigs, str):
            sigs = [sigs]
        if not isinstance(sigs, list) or not all(isinstance(s, str) for s in sigs) or not sigs:
            raise CaptureError("signals must be a non-empty list")
        bad = [s for s in sigs if s not in engine.signals]
        if bad:
            raise CaptureError(f"unknown signal {bad[0]!r}: this model offers {', '.join(engine.signals)}")
        settings["signals"] = [s for s in engine.signals if s in sigs]
        reducer = raw.get("reducer") or "random"
        if not isinstance(reducer, str) or reducer not in REDUCERS:
            raise CaptureError(f"reducer must be one of {', '.join(REDUCERS)}")
        settings["reducer"] = reducer
        settings["ignore_eos"] = raw.get("ignore_eos") is True  # benchmarks: every run makes max_new_tokens
    conv = raw.get("conversation")
    settings["conversation"] = conv if isinstance(conv, str) and len(conv) <= 64 else secrets.token_hex(6)
    turn = raw.get("turn")
    settings["turn"] = int(turn) if isinstance(turn, int) and not isinstance(turn, bool) and 0 <= turn < 10**6 else 0
    return out, settings
