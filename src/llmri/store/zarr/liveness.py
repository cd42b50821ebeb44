"""Whether a session's writer still runs (docs/FORMAT.md, "Status"): its pid on this host, its
heartbeat from another."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

#: A recording session whose writer runs on another host reads as interrupted once its
#: heartbeat (refreshed at every commit) is older than this many seconds.
STALE_SECONDS = 120.0


def pid_start(pid: int) -> int | None:
    """The process start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` runs and, when ``start`` is known, is the one that started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    if start is not None:
        now = pid_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused by another process
    return True


def this_writer() -> dict[str, Any]:
    """``meta["writer"]`` for a writer in this process, its heartbeat now."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": pid_start(pid), "heartbeat": time.time()}


def writer_alive(writer: dict[str, Any] | None, now: float | None = None) -> tuple[bool, str]:
    """Whether the writer described by ``meta["writer"]`` may still be running, and why not."""
    if not isinstance(writer, dict):
        return False, "no writer recorded"
    now = time.time() if now is None else now
    host, pid = writer.get("host"), writer.get("pid")
    if host == socket.gethostname() and isinstance(pid, int):
        if pid_alive(pid, writer.get("pid_start")):
            return True, ""
        return False, f"writer process {pid} on {host} is gone"
    beat = writer.get("heartbeat")
    if isinstance(beat, (int, float)) and now - beat <= STALE_SECONDS:
        return True, ""
    return False, f"writer on {host} sent no heartbeat for over {int(STALE_SECONDS)} s"


def effective_status(meta: dict[str, Any]) -> tuple[str, str]:
    """``(status, reason)``: ``recording`` with a dead writer reads as ``interrupted``."""
    status = str(meta.get("status", "complete"))
    if status != "recording":
        return status, ""
    alive, why = writer_alive(meta.get("writer"))
    return ("recording", "") if alive else ("interrupted", why)
