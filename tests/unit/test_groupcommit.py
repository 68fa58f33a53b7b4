"""Where the content store's small-upload batches are written: on the event loop's thread
while those writes are fast, in a worker thread once the median of the recent ones is slow (a
slow disk) or a batch is large, with one inline try again every PROBE_EVERY batches."""

from __future__ import annotations

import asyncio
import threading
import time

from parity.core.storage.multiformats import RAW, Cid
from parity.storage import groupcommit
from parity.storage.groupcommit import SmallPuts
from parity.storage.ports import Stored


class RecordingWrite:
    """A batch writer that records its thread and ``wait``; ``inline_cost`` seconds are
    spent (sleeping) when it runs on the loop's thread."""

    def __init__(self, inline_cost: float = 0.0, costs: list[float] | None = None) -> None:
        self.inline_cost = inline_cost
        self.costs = list(costs or [])  # per inline call, in order, before inline_cost applies
        self.calls: list[tuple[bool, bool, int]] = []  # (on the loop thread, wait, items)
        self.loop_thread = threading.get_ident()

    def __call__(self, items: list[tuple[bytes, bool]], *, wait: bool = True) -> list[Stored]:
        on_loop = threading.get_ident() == self.loop_thread
        self.calls.append((on_loop, wait, len(items)))
        if on_loop:
            time.sleep(self.costs.pop(0) if self.costs else self.inline_cost)
        return [Stored(Cid(1, RAW, b"\x12\x20" + bytes(32)), len(d), None) for d, _ in items]


async def test_a_fast_small_batch_is_written_on_the_loop_without_waiting_for_locks():
    write = RecordingWrite()
    puts = SmallPuts(write)
    await asyncio.gather(*(puts.put(b"x" * 100, False) for _ in range(3)))
    assert write.calls == [(True, False, 3)]  # one batch, inline, never waiting for a GC
    assert (puts.batches, puts.inline_batches) == (1, 1)
    assert puts.inline_ms is not None and puts.inline_ms < groupcommit.INLINE_MAX_MS


async def test_slow_inline_writes_send_batches_to_a_worker_thread_and_are_tried_again():
    write = RecordingWrite(inline_cost=0.02)  # 20 ms on the loop: a slow disk
    puts = SmallPuts(write, inline_max_ms=5.0)
    first = groupcommit.MIN_SAMPLES
    for _ in range(first + groupcommit.PROBE_EVERY):
        await puts.put(b"y", False)
    where = [on_loop for on_loop, _, _ in write.calls]
    # The first MIN_SAMPLES batches were timed inline (too slow); the next PROBE_EVERY - 1 went
    # to a thread (waiting for locks is harmless there), then one was tried inline again.
    assert where[:first] == [True] * first
    assert where[first : first + groupcommit.PROBE_EVERY - 1] == [False] * (
        groupcommit.PROBE_EVERY - 1
    )
    assert where[-1] is True
    assert all(wait for on_loop, wait, _ in write.calls if not on_loop)
    assert puts.inline_batches == first + 1


async def test_one_slow_write_among_fast_ones_keeps_batches_on_the_loop():
    # A healthy disk's occasional slow fsync: the median stays low, nothing moves to a thread.
    write = RecordingWrite(costs=[0.0, 0.03, 0.0, 0.0, 0.03, 0.0, 0.0])
    puts = SmallPuts(write, inline_max_ms=5.0)
    for _ in range(12):
        await puts.put(b"q", False)
    assert [on_loop for on_loop, _, _ in write.calls] == [True] * 12
    assert puts.inline_ms is not None and puts.inline_ms < 5.0


async def test_a_fast_probe_brings_the_batches_back_to_the_loop():
    first = groupcommit.MIN_SAMPLES
    # Slow until the first probe, fast from then on (the disk recovered).
    write = RecordingWrite(costs=[0.02] * first)
    puts = SmallPuts(write, inline_max_ms=5.0)
    for _ in range(first + groupcommit.PROBE_EVERY + 5):
        await puts.put(b"r", False)
    where = [on_loop for on_loop, _, _ in write.calls]
    assert where[first : first + groupcommit.PROBE_EVERY - 1] == [False] * (
        groupcommit.PROBE_EVERY - 1
    )
    assert where[first + groupcommit.PROBE_EVERY - 1 :] == [True] * 6  # the probe, then inline


async def test_a_large_batch_and_a_disabled_inline_path_use_a_worker_thread():
    write = RecordingWrite()
    await SmallPuts(write).put(b"z" * (groupcommit.INLINE_MAX_BYTES + 1), False)
    await SmallPuts(write, inline_max_ms=0).put(b"z", False)
    assert [on_loop for on_loop, _, _ in write.calls] == [False, False]
