"""``llmri info STORE [SESSION]``: list a store's sessions, or show one session in detail."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from .._errors import LlmriError, StoreError
from .probes import describe as probe_lines
from .saes import describe as sae_lines


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="list the sessions of a store, or show one", description=__doc__)
    p.add_argument("store", help="store path or URL")
    p.add_argument("session", nargs="?", help="a session id (or 'latest') to show in detail")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def pick_session(store: Any, session_id: str) -> Any:
    """``session_id`` or ``"latest"`` (the most recently created) -> a session reader."""
    if session_id == "latest":
        ids = store.session_ids()
        if not ids:
            raise StoreError(f"{store.url}: the store has no sessions")
        session_id = ids[-1]
    return store.session(session_id)


def _model_name(meta: dict[str, Any]) -> str:
    m = meta.get("model")
    return str(m.get("name", "?")) if isinstance(m, dict) else str(m or "?")


def _row(s: Any) -> dict[str, Any]:
    m = s.meta
    return {
        "id": s.id,
        "created": str(m.get("created", "")),
        "model": _model_name(m),
        "tokens": len(s),
        "signals": ",".join(s.signals) or "-",
        "status": s.status,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["id", "created", "model", "tokens", "signals", "status"]
    width = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _details(s: Any) -> str:
    m = s.meta
    t = s.tokens
    n_prompt = sum(1 for r in t.role if r == "prompt")
    gen = m.get("generation") or {}
    red = m.get("reducer") or {}
    model = m.get("model") if isinstance(m.get("model"), dict) else {}
    lines = [
        f"session      {s.id}",
        f"status       {s.status}" + (f" ({m['interrupted_reason']})" if m.get("interrupted_reason") else ""),
        f"created      {m.get('created', '')}",
        f"model        {_model_name(m)}  fingerprint {model.get('fingerprint', '') or '-'}",
        f"backend      {m.get('backend', '-')}",
        f"reducer      {red.get('kind', '-')}  seed {red.get('seed', '-')}",
        f"signals      {', '.join(s.signals) or '- (chat only)'}",
        f"layers       {len(s.layers)}",
        f"tile         {s.tile[0]}x{s.tile[1]}",
        f"tokens       {len(s)} ({n_prompt} prompt, {len(s) - n_prompt} generated)",
        "generation   " + ", ".join(f"{k}={v}" for k, v in gen.items() if k != "stop" or v),
        f"stop reason  {m.get('stop_reason', '-') or '-'}",
    ]
    lines += [f"intervention {x}" for x in _interventions(m)]
    lines += [f"sae          {x}" for x in sae_lines(m)]
    lines += [f"probe        {x}" for x in probe_lines(m)]
    if m.get("baseline"):
        lines.append(f"baseline     {m['baseline']}")
    msgs = m.get("messages")
    if isinstance(msgs, list) and msgs:
        lines.append("messages")
        lines += [f"  {x.get('role', '?')}: {x.get('content', '')}" for x in msgs if isinstance(x, dict)]
    elif m.get("prompt"):
        lines.append(f"prompt       {m['prompt']}")
    lines += ["", "generated text", s.text]
    return "\n".join(lines)


def _interventions(meta: dict[str, Any]) -> list[str]:
    """One line per intervention the session records (an unreadable record says so)."""
    from ..interventions import from_dict

    out = []
    for d in meta.get("interventions") or []:
        try:
            out.append(from_dict(d).describe())
        except LlmriError as exc:
            out.append(f"(unreadable: {exc})")
    return out


def run(args: argparse.Namespace) -> int:
    import llmri

    from ..render.export import session_json

    store = llmri.open_store(args.store)
    if args.session:
        s = pick_session(store, args.session)
        if args.json:
            doc = session_json(s)
            doc.pop("tokens")
            print(json.dumps(doc, ensure_ascii=False, indent=1))
        else:
            print(_details(s))
        _print_upgrade_note(store, args.store)
        return 0
    sessions = store.sessions()
    rows = [_row(s) for s in sessions]
    if args.json:
        print(json.dumps({"store": store.url, "sessions": rows, "problems": store.problems}, indent=1))
    elif rows:
        print(_table(rows))
    else:
        print(f"{store.url}: no sessions")
    for p in store.problems:
        print(f"llmri info: skipped: {p}", file=sys.stderr)
    _print_upgrade_note(store, args.store)
    return 0


def _print_upgrade_note(store: Any, typed: str) -> None:
    note = upgrade_note(store, typed)
    if note:
        print(f"llmri info: {note}", file=sys.stderr)


def upgrade_note(store: Any, typed: str) -> str:
    """One line when some sessions of a Zarr store predate the current layout (no ``dimension_names``):
    llmri reads them as they are, xarray alone needs ``llmri upgrade-store``. ``""`` otherwise."""
    from ..store.zarr import ZarrFrameStore
    from ..store.zarr.upgrade import upgrade_store

    if not isinstance(store, ZarrFrameStore):
        return ""
    try:
        old = upgrade_store(store.url, dry_run=True).upgraded
    except StoreError:
        return ""  # unreadable parts are already reported as skipped
    if not old:
        return ""
    n = len(old)
    what = "1 session was" if n == 1 else f"{n} sessions were"
    return (
        f"{what} written before arrays had dimension names; llmri reads them as they are, "
        f"`llmri upgrade-store {shlex.quote(typed)}` names their axes for xarray and other Zarr readers"
    )
