"""Session ids and metadata defaults shared by every store."""

from __future__ import annotations

import datetime as _dt
import re
import secrets
from typing import Any

from .base import FORMAT_VERSION, session_format_version

_ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


def new_session_id() -> str:
    """Sortable by creation time, unique across processes: ``YYYYMMDD-HHMMSS-xxxxxx``."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def is_session_id(s: str) -> bool:
    return bool(_ID_RE.match(s))


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def prepare_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Copy ``meta`` and fill the keys every session carries."""
    out = dict(meta)
    out.setdefault("id", new_session_id())
    out["format_version"] = max(int(out.get("format_version", FORMAT_VERSION)), session_format_version(out))
    out.setdefault("created", now_iso())
    out["status"] = "recording"
    out.setdefault("signals", [])
    out.setdefault("layers", [])
    out.setdefault("tile", [0, 0])
    out.setdefault("chat_only", not out["signals"])
    return out
