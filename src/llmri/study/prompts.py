"""A study's prompts: JSONL, CSV, a local Hugging Face ``datasets`` directory, or any iterable, read
as :class:`PromptRow` values one at a time (a file is streamed, never loaded whole).

A file is read twice: :func:`check_prompts` walks it line by line first and raises one
:class:`PromptFileError` line naming the file and line (a malformed line, a missing prompt, a
duplicate id, an empty file) before anything is generated; :func:`read_prompts` then streams it
again for the capture. Only the ids seen are kept between lines (for the duplicate check).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .._errors import CaptureError

#: The keys of a row that are not free metadata.
PROMPT_KEYS = ("prompt", "messages", "id")


class PromptFileError(CaptureError):
    """A prompt source that cannot be read: the message names the file and the line."""


@dataclass(frozen=True)
class PromptRow:
    """One prompt of a study: ``prompt`` (text, or a list of ``{role, content}`` messages), the
    user's ``id`` (or ``None``), the row's free ``metadata`` (every other key), its ``index`` in
    the source (0-based) and ``where`` it came from (``file:line`` for a file)."""

    prompt: str | list[dict[str, str]]
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    index: int = 0
    where: str = ""

    def key(self, settings: dict[str, Any] | None = None, model: str = "") -> str:
        """What marks this prompt done in a store: ``id:<id>`` when it has one, else a content hash
        of the prompt, the capture settings and the model's fingerprint (``sha:<hex>``)."""
        if self.id is not None:
            return f"id:{self.id}"
        blob = json.dumps([self.prompt, settings or {}, model], sort_keys=True, default=str)
        return "sha:" + hashlib.sha256(blob.encode()).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON (a Ray task or a subprocess takes it so): :func:`row_from_dict` reads it."""
        return {
            "prompt": self.prompt,
            "id": self.id,
            "metadata": self.metadata,
            "index": self.index,
            "where": self.where,
        }


def row_from_dict(d: dict[str, Any]) -> PromptRow:
    """The :class:`PromptRow` that :meth:`PromptRow.to_dict` wrote."""
    return PromptRow(
        d["prompt"], d.get("id"), dict(d.get("metadata") or {}), int(d.get("index", 0)), d.get("where", "")
    )


def _is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))


def _row(obj: Any, index: int, where: str) -> PromptRow:
    """One raw record (a dict or a string) checked into a :class:`PromptRow`."""
    if isinstance(obj, str):
        obj = {"prompt": obj}
    if not isinstance(obj, dict):
        raise PromptFileError(f"{where}: expected a JSON object with 'prompt' or 'messages', got {type(obj).__name__}")
    has_p = obj.get("prompt") is not None
    has_m = obj.get("messages") is not None
    if has_p == has_m:
        what = "both 'prompt' and 'messages'" if has_p else "no 'prompt' (or 'messages')"
        raise PromptFileError(f"{where}: {what}")
    if has_p:
        prompt: Any = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptFileError(f"{where}: 'prompt' must be a non-empty string")
    else:
        from ..capture.messages import check_messages

        try:
            prompt = check_messages(obj["messages"])
        except CaptureError as exc:
            raise PromptFileError(f"{where}: {exc}") from None
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise PromptFileError(f"{where}: 'id' must be a string or a whole number")
    meta = {k: v for k, v in obj.items() if k not in PROMPT_KEYS}
    try:
        json.dumps(meta)
    except (TypeError, ValueError):
        raise PromptFileError(f"{where}: its metadata is not JSON-serialisable") from None
    return PromptRow(prompt, None if rid is None else str(rid), meta, index, where)


def _records(source: Any) -> Iterator[tuple[Any, str]]:
    """``(raw record, where)`` from a path (JSONL, CSV, a datasets directory) or an iterable."""
    if not _is_path(source):
        if isinstance(source, (dict, bytes)):
            raise PromptFileError("prompts: give a path, or an iterable of strings or dicts")
        try:
            it = iter(source)
        except TypeError:
            raise PromptFileError(f"prompts: not a path or an iterable ({type(source).__name__})") from None
        for i, obj in enumerate(it):
            yield obj, f"prompts[{i}]"
        return
    path = os.fspath(source)
    if os.path.isdir(path):
        yield from _dataset_records(path)
        return
    if not os.path.isfile(path):
        raise PromptFileError(f"{path}: no such file")
    if path.lower().endswith(".csv"):
        yield from _csv_records(path)
        return
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PromptFileError(f"{path}:{n}: not JSON ({exc.msg}, column {exc.colno})") from None
                yield obj, f"{path}:{n}"
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _csv_records(path: str) -> Iterator[tuple[Any, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                return
            if "prompt" not in reader.fieldnames:
                raise PromptFileError(f"{path}:1: no 'prompt' column (columns: {', '.join(reader.fieldnames)})")
            for row in reader:
                n = reader.line_num
                if None in row or any(v is None for v in row.values()):
                    raise PromptFileError(f"{path}:{n}: {len(reader.fieldnames)} columns expected")
                obj: dict[str, Any] = {k: v for k, v in row.items() if k != "id" or v != ""}
                yield obj, f"{path}:{n}"
    except csv.Error as exc:
        raise PromptFileError(f"{path}: not CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _dataset_records(path: str) -> Iterator[tuple[Any, str]]:
    """A directory ``datasets.Dataset.save_to_disk`` wrote (memory-mapped Arrow: rows are read as
    they are asked for)."""
    try:
        import datasets
    except ImportError:
        raise PromptFileError(
            f"{path}: a datasets directory needs Hugging Face datasets: pip install datasets"
        ) from None
    try:
        ds = datasets.load_from_disk(path)
    except Exception as exc:  # noqa: BLE001 - datasets raises FileNotFoundError, ValueError, its own errors
        raise PromptFileError(f"{path}: not a datasets directory ({type(exc).__name__}: {exc})") from None
    if not hasattr(ds, "column_names") or isinstance(ds.column_names, dict):
        raise PromptFileError(f"{path}: a DatasetDict: save one split (ds['train'].save_to_disk(...))")
    for i, obj in enumerate(ds):
        yield obj, f"{path}:row {i}"


def read_prompts(source: Any) -> Iterator[PromptRow]:
    """The rows of ``source``, one at a time, each checked (one :class:`PromptFileError` line for
    the first bad one; duplicate ids are :func:`check_prompts`' to find)."""
    for i, (obj, where) in enumerate(_records(source)):
        yield _row(obj, i, where)


def check_prompts(source: Any) -> int:
    """Walk ``source`` once (streamed) and return its number of prompts; raises one
    :class:`PromptFileError` line for a malformed line, a missing prompt, a duplicate id or an
    empty source, before any prompt is captured."""
    seen: dict[str, str] = {}
    n = 0
    for row in read_prompts(source):
        n += 1
        if row.id is not None:
            first = seen.get(row.id)
            if first is not None:
                raise PromptFileError(f"{row.where}: duplicate id {row.id!r:.80} (first at {first})")
            seen[row.id] = row.where
    if n == 0:
        name = os.fspath(source) if _is_path(source) else "prompts"
        raise PromptFileError(f"{name}: no prompts (empty)")
    return n


def rows_of(source: Any) -> Iterable[PromptRow]:
    """``source``'s rows to capture: a path or a re-iterable collection is checked whole first
    (:func:`check_prompts`) and then streamed again; a one-shot iterator is checked as it goes."""
    if _is_path(source) or (isinstance(source, Iterable) and not isinstance(source, Iterator)):
        return _Reread(source, check_prompts(source))
    return _checked_once(source)


class _Reread:
    """A checked source read again from its start each time it is iterated; ``count``: its prompts."""

    def __init__(self, source: Any, count: int) -> None:
        self.source = source
        self.count = count

    def __iter__(self) -> Iterator[PromptRow]:
        return read_prompts(self.source)


def _checked_once(source: Iterator[Any]) -> Iterator[PromptRow]:
    seen: dict[str, str] = {}
    n = 0
    for row in read_prompts(source):
        n += 1
        if row.id is not None:
            if row.id in seen:
                raise PromptFileError(f"{row.where}: duplicate id {row.id!r:.80} (first at {seen[row.id]})")
            seen[row.id] = row.where
        yield row
    if n == 0:
        raise PromptFileError("prompts: no prompts (empty)")
