"""One WebSocket client's send queue: bounded in bytes, and never a reason for generation to wait."""

from __future__ import annotations

import asyncio
import json
from collections import deque

Message = bytes | str


class SendQueue:
    """What one client has yet to receive, drained by that client's sender task.

    :meth:`offer` never blocks and never refuses: it runs on the event loop for every message of every
    turn. A client that falls behind by ``limit`` bytes or more (a slow page, a background tab, a socket
    nobody reads) has everything queued dropped and gets one ``resync`` message instead; it fetches the
    gap from the store over REST. So the queue holds at most ``limit`` bytes plus the message that
    crossed it (a prompt batch may exceed a small limit alone) plus one resync note. Frames (bytes) that
    arrive at a drop are dropped with the backlog; JSON text (``done``, ``error``) is kept after the note.

    Not thread-safe: the worker thread hands messages to the event loop, which offers them here.
    """

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.items: deque[Message] = deque()
        self.nbytes = 0
        self.peak_bytes = 0
        self.dropped = 0
        self.sent = 0
        self.closed = False
        self._wake = asyncio.Event()

    def offer(self, item: Message, session: str | None = None) -> None:
        """Queue ``item`` (``session``: the ``"store/id"`` it belongs to, named in a resync)."""
        if self.closed:
            return
        if self.nbytes >= self.limit:
            # Too far behind: drop what is queued and say so once; the frames are in the store.
            self.items.clear()
            self.nbytes = 0
            self.dropped += 1
            note = json.dumps({"type": "resync", "session": session, "reason": "this page fell behind the stream"})
            self._push(note)
            if isinstance(item, bytes):
                return
        self._push(item)

    def _push(self, item: Message) -> None:
        self.items.append(item)
        self.nbytes += len(item)
        self.peak_bytes = max(self.peak_bytes, self.nbytes)
        self._wake.set()

    async def get(self) -> Message | None:
        """The next message to send, waiting for one; ``None`` once the queue is closed."""
        while not self.closed:
            if self.items:
                item = self.items.popleft()
                self.nbytes -= len(item)
                return item
            self._wake.clear()
            await self._wake.wait()
        return None

    def close(self) -> None:
        """Drop the queue for good: later offers are ignored and a waiting :meth:`get` returns ``None``."""
        self.closed = True
        self._wake.set()

    def stats(self) -> dict[str, int]:
        """``bytes`` queued now, ``peak_bytes``, ``dropped`` (times the backlog was dropped), ``sent``."""
        return {"bytes": self.nbytes, "peak_bytes": self.peak_bytes, "dropped": self.dropped, "sent": self.sent}
