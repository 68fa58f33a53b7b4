"""Small uploads written together: one pack, one fsync and one index per batch.

Each small upload used to be its own pack: a file created, written, fsynced, its index written
through a temporary file, fsynced, renamed and the directory fsynced, all in a worker thread.
Under load every one of those system calls waits for the GIL on its way back (up to the
interpreter's switch interval while the event loop runs Python): measured here, a 10 KB put
that takes 1.2 ms on an idle process took ~70 ms beside one busy thread. A round of federated
learning stores one update per participant at about the same moment, so those waits were paid
once per participant.

:class:`SmallPuts` hands the uploads to one writer at a time: the first goes at once; those
that arrive while it is being written wait for it and then go together, in one pack. Each
upload is still reported stored only after its pack and index are durable, exactly as alone.

A small batch is written on the event loop's own thread while such writes stay fast: there a
dozen system calls cost their own time (~2 ms for one to ten 10 KB uploads on a local disk,
three fsyncs included), where a worker thread under load waits for the GIL after each of them
(10-25 ms measured for the same batches). The loop keeps the last :data:`WINDOW` inline write
times and sends batches to a worker thread while their median is above :data:`INLINE_MAX_MS`
(a slow disk), trying one inline again every :data:`PROBE_EVERY` batches; a probe within the
limit starts the record afresh. The median, not a moving average: one slow fsync (20 ms now and
then on a healthy disk) must not send the next dozens of batches to a thread. A batch above
:data:`INLINE_MAX_BYTES` always goes to a thread.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from parity.storage.ports import Stored

MAX_ITEMS = 64  # uploads per batch, at most
MAX_BYTES = 8 << 20  # bytes per batch, at most (one upload may exceed it alone)
INLINE_MAX_BYTES = 512 << 10  # larger batches are always written in a worker thread
INLINE_MAX_MS = 5.0  # inline while the median of the recent inline writes stays at most this
WINDOW = 9  # inline write times kept for that median
MIN_SAMPLES = 3  # fewer than this many times kept: inline (nothing says the disk is slow yet)
PROBE_EVERY = 16  # in a worker thread, every this many batches one is tried inline again


class WriteBatch(Protocol):
    """Store ``items`` (``(data, pin)``) together; ``wait=False`` (on the loop's thread):
    raise ``BlockingIOError`` instead of waiting for a lock."""

    def __call__(self, items: list[tuple[bytes, bool]], *, wait: bool = ...) -> list[Stored]: ...


@dataclass
class _Pending:
    data: bytes
    pin: bool
    done: asyncio.Future[Stored] = field(repr=False)


class SmallPuts:
    """Batches small uploads for ``write`` (called with ``(data, pin)`` pairs, on the loop's
    thread or in a worker thread; returns what each stored, in order; stores all of them or
    raises)."""

    def __init__(
        self,
        write: WriteBatch,
        *,
        max_items: int = MAX_ITEMS,
        max_bytes: int = MAX_BYTES,
        inline_max_ms: float = INLINE_MAX_MS,
    ) -> None:
        self._write = write
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.inline_max_ms = inline_max_ms  # 0: never inline
        self._recent: deque[float] = deque(maxlen=WINDOW)  # ms of the last inline writes
        self._since_inline = 0
        self._queue: deque[_Pending] = deque()
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # batches written (tests and diagnostics)
        self.inline_batches = 0  # of which on the loop's thread

    async def put(self, data: bytes, pin: bool) -> Stored:
        loop = asyncio.get_running_loop()
        if self._writer is not None and self._writer.get_loop() is not loop:
            # A writer (and waiters) of an event loop that has since closed: never resumed.
            self._writer, self._queue = None, deque()
        pending = _Pending(data, pin, loop.create_future())
        self._queue.append(pending)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="content-store-small-puts")
        # A caller that goes away cancels only its own wait: the batch is written regardless
        # (content-addressed, an unreferenced upload is what GC collects).
        return await pending.done

    @property
    def inline_ms(self) -> float | None:
        """The median of the recent inline write times (ms), or None before the first."""
        return statistics.median(self._recent) if self._recent else None

    def _slow(self) -> bool:
        return len(self._recent) >= MIN_SAMPLES and (self.inline_ms or 0.0) > self.inline_max_ms

    def _inline(self, size: int) -> bool:
        """Whether the next batch (``size`` bytes) is written on the loop's thread."""
        if self.inline_max_ms <= 0 or size > INLINE_MAX_BYTES:
            return False
        if not self._slow():
            return True
        self._since_inline += 1
        return self._since_inline >= PROBE_EVERY  # the disk may have become fast again

    async def _write_batch(self, items: list[tuple[bytes, bool]]) -> list[Stored]:
        if not self._inline(sum(len(data) for data, _ in items)):
            return await asyncio.to_thread(self._write, items)
        self._since_inline = 0
        probe = self._slow()
        started = time.perf_counter()
        busy = False
        try:
            stored = self._write(items, wait=False)
        except BlockingIOError:
            busy = True  # a GC holds the store: wait for it off the loop (below)
        finally:  # a failed write is timed too: it blocked the loop as long
            ms = (time.perf_counter() - started) * 1000
            if probe and ms <= self.inline_max_ms:
                self._recent.clear()  # fast again: the slow record no longer applies
            self._recent.append(ms)
        if busy:
            return await asyncio.to_thread(self._write, items)
        self.inline_batches += 1
        return stored

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._queue and len(batch) < self.max_items:
            nxt = self._queue[0]
            if batch and size + len(nxt.data) > self.max_bytes:
                break
            batch.append(self._queue.popleft())
            size += len(nxt.data)
        return batch

    async def _drain(self) -> None:
        batch: list[_Pending] = []
        try:
            while self._queue:
                batch = self._take()
                try:
                    stored = await self._write_batch([(p.data, p.pin) for p in batch])
                except Exception as exc:
                    _fail(batch, exc)
                else:
                    self.batches += 1
                    for p, s in zip(batch, stored, strict=True):
                        if not p.done.done():
                            p.done.set_result(s)
                batch = []
        except BaseException as exc:  # cancelled (shutdown): nobody is left waiting forever
            _fail([*batch, *self._queue], exc)
            self._queue.clear()
            raise

    async def aclose(self) -> None:
        """Wait for the batch being written (and those queued behind it)."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for p in batch:
        if not p.done.done():
            if isinstance(exc, asyncio.CancelledError):
                p.done.cancel()
            else:
                p.done.set_exception(exc)
