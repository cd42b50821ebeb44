"""The check of a client's ``chat`` message: what may reach an engine, as one-line CaptureErrors."""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING, Any

from ..._errors import CaptureError
from ...capture.messages import check_messages
from ...reducers import REDUCERS
from .protocol import MAX_MESSAGES, MAX_NEW_TOKENS, ChatSettings

if TYPE_CHECKING:
    from .engines import Engine


def shown(value: Any, limit: int = 40) -> str:
    """A client's value in an error message: short and one line, never the repr of a huge or deep value."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a JSON {'object' if isinstance(value, dict) else 'array' if isinstance(value, list) else 'value'}"


def _number(settings: dict[str, Any], key: str, default: float, lo: float, hi: float, integer: bool = False) -> float:
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


def _whole(settings: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    """:func:`_number` for a setting that must be a whole number."""
    return int(_number(settings, key, default, lo, hi, integer=True))


def check_request(data: Any, engine: Engine) -> tuple[list[dict[str, str]], ChatSettings]:
    """Validate a ``chat`` message: ``(messages, settings)``; raises CaptureError with one line."""
    out = check_messages(data.get("messages") if isinstance(data, dict) else None, limit=MAX_MESSAGES)
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        raise CaptureError("the last message must be a non-empty user message")
    raw = data.get("settings") or {}
    if not isinstance(raw, dict):
        raise CaptureError("settings must be an object")
    max_new_tokens = _whole(raw, "max_new_tokens", 128, 1, MAX_NEW_TOKENS)
    temperature = _number(raw, "temperature", 0.0, 0.0, 5.0)
    top_p = _number(raw, "top_p", 1.0, 0.0, 1.0)
    seed = _whole(raw, "seed", 0, 0, 2**31 - 1)
    if top_p <= 0:
        raise CaptureError("top_p must be above 0")
    conv, turn = raw.get("conversation"), raw.get("turn")
    settings = ChatSettings(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        conversation=conv if isinstance(conv, str) and len(conv) <= 64 else secrets.token_hex(6),
        turn=int(turn) if isinstance(turn, int) and not isinstance(turn, bool) and 0 <= turn < 10**6 else 0,
    )
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
    return out, settings
