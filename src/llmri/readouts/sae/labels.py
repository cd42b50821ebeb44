"""Feature labels, offline: a local file of explanations, read into ``{feature: text}``.

Shapes read: Neuronpedia's explanation export (a JSON list of objects with ``index`` and
``description``, and its bulk datasets' JSON Lines, ``.jsonl`` or ``.jsonl.gz``, one such object per
line; more fields are ignored, the first description of a feature is kept), or a plain JSON object
``{"index": "text"}``. Every failure is one :class:`~llmri.SAEError` line naming the file.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .files import fail


def _entries(data: Any, path: Path) -> Iterable[tuple[Any, Any]]:
    if isinstance(data, Mapping):
        return data.items()
    if isinstance(data, list):
        out = []
        for i, row in enumerate(data):
            if not isinstance(row, Mapping) or "index" not in row:
                raise fail(path, f"entry {i} is not an object with 'index' (Neuronpedia's export shape)")
            out.append((row["index"], row.get("description", row.get("explanation", ""))))
        return out
    raise fail(
        path,
        f"labels must be a JSON list of {{index, description}} or an object {{index: text}},"
        f" not a {type(data).__name__}",
    )


def read_labels(path: str | Path, d_sae: int | None = None) -> dict[int, str]:
    """``{feature: text}`` from a labels file (see the module's doc); ``d_sae``: refuse an index outside it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise fail(p, "missing (a labels file)")
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        text = raw.decode("utf-8")
        if p.name.endswith((".jsonl", ".jsonl.gz")):
            data: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, EOFError) as exc:
        raise fail(p, f"not a readable JSON labels file ({str(exc)[:120]})") from None
    return labels_from(_entries(data, p), p, d_sae)


def labels_from(entries: Iterable[tuple[Any, Any]], where: str | Path, d_sae: int | None = None) -> dict[int, str]:
    """``{feature: text}`` from ``(index, text)`` pairs (an index as int or a string of digits)."""
    out: dict[int, str] = {}
    for index, text in entries:
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise fail(where, f"label index {index!r:.40} is not a whole number") from None
        if isinstance(index, (bool, float)) or i < 0 or (d_sae is not None and i >= d_sae):
            raise fail(where, f"label index {index!r:.40} is not a feature of 0-{(d_sae or 0) - 1}")
        if not isinstance(text, str):
            raise fail(where, f"the label of feature {i} is not a string")
        out.setdefault(i, text.strip())
    return out
