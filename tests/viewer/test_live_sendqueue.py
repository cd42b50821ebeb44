"""The live chat's per-client send queue on its own: bounded in bytes, one resync per drop, never blocking."""

from __future__ import annotations

import asyncio
import json
import time

from llmri.viewer.live import SendQueue

FRAME = bytes(1000)


def _drain(q: SendQueue) -> list[bytes | str]:
    async def take() -> list[bytes | str]:
        out: list[bytes | str] = []
        while q.items:
            item = await q.get()
            assert item is not None
            out.append(item)
        return out

    return asyncio.run(take())


def _resyncs(items: list[bytes | str]) -> list[dict]:
    return [m for m in (json.loads(i) for i in items if isinstance(i, str)) if m["type"] == "resync"]


def test_a_reading_client_gets_everything_in_order():
    q = SendQueue(limit=10_000)
    sent = [bytes([i]) * 100 for i in range(20)] + ['{"type": "done"}']
    for item in sent:
        q.offer(item, "s0/a")
    assert _drain(q) == sent
    assert q.nbytes == 0 and q.dropped == 0 and q.peak_bytes == 20 * 100 + len(sent[-1])


def test_the_bytes_held_stay_bounded_however_much_is_offered():
    q = SendQueue(limit=10_000)
    for _ in range(10_000):  # 10 MB offered to a client that never reads
        q.offer(FRAME, "s0/a")
    assert q.peak_bytes <= q.limit + len(FRAME) + 200  # the limit, the message that crossed it, one note
    assert sum(len(i) for i in q.items) == q.nbytes <= q.peak_bytes
    assert q.dropped >= 900  # it fell behind again and again


def test_a_drop_queues_exactly_one_resync_and_keeps_later_text():
    q = SendQueue(limit=5_000)
    for _ in range(5):
        q.offer(FRAME, "s0/a")
    assert q.dropped == 0 and q.nbytes == 5_000
    q.offer(FRAME, "s0/a")  # the backlog crossed the limit: dropped, this frame with it
    q.offer('{"type": "done"}', "s0/a")
    items = _drain(q)
    assert q.dropped == 1
    assert [json.loads(i) for i in items] == [
        {"type": "resync", "session": "s0/a", "reason": "this page fell behind the stream"},
        {"type": "done"},
    ]


def test_text_that_arrives_at_a_drop_is_kept_after_the_note():
    q = SendQueue(limit=1_000)
    q.offer(FRAME, "s0/a")
    q.offer('{"type": "error", "message": "x"}', "s0/a")
    items = _drain(q)
    assert len(_resyncs(items)) == 1 and json.loads(items[-1])["type"] == "error"


def test_offer_never_blocks_and_get_waits_for_the_next_message():
    q = SendQueue(limit=1 << 20)

    async def scenario() -> bytes | str | None:
        waiter = asyncio.create_task(q.get())
        await asyncio.sleep(0.01)
        assert not waiter.done()  # nothing queued: the sender waits
        t0 = time.perf_counter()
        for _ in range(500):  # offered from the loop while nobody drains: returns at once
            q.offer(FRAME)
        assert time.perf_counter() - t0 < 1.0
        return await asyncio.wait_for(waiter, 1)

    assert asyncio.run(scenario()) == FRAME  # woken by the first offer
    assert len(q.items) == 499 and q.dropped == 0


def test_a_closed_queue_ends_a_waiting_get_and_ignores_offers():
    q = SendQueue(limit=100)

    async def scenario() -> bytes | str | None:
        waiter = asyncio.create_task(q.get())
        await asyncio.sleep(0.01)
        q.close()
        return await asyncio.wait_for(waiter, 1)

    assert asyncio.run(scenario()) is None
    q.offer(FRAME)
    assert not q.items and asyncio.run(q.get()) is None
