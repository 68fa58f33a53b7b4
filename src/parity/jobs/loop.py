"""One background loop for every periodic worker of the server (ARCHITECTURE §2 "Loops").

A :class:`BackgroundLoop` owns one asyncio task that runs a tick, then waits: the interval
(with a little jitter, so replicas started together drift apart), or longer after failures
(exponential back-off, capped, reset by the next tick that succeeds), or less when its wake
event is set (work committed elsewhere in this process) or when it is stopped. ``stop`` ends it
at a tick boundary and cancels a tick still running after its timeout.

A tick runs under a :class:`TickLock`, which decides whether this replica may run it now and
hands the tick what holding the lock gave (see :mod:`parity.jobs.locks`): nothing
(:class:`~parity.jobs.locks.NoLock`), a session-level advisory lock held on its own connection
for the whole tick (:class:`~parity.jobs.locks.SessionAdvisoryLock`), or the tick's own write
transaction that starts with ``pg_try_advisory_xact_lock``
(:class:`~parity.jobs.locks.TransactionAdvisoryLock`). A lock held elsewhere skips the tick.

Every tick, direct calls to :meth:`BackgroundLoop.run_tick` included, updates the counters in
:attr:`BackgroundLoop.stats` and calls the metrics hook with its outcome."""

from __future__ import annotations

import asyncio
import contextlib
import random as random_module
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from parity.clock import Clock
from parity.logging import get_logger

log = get_logger("parity.jobs")

G = TypeVar("G")  # what holding the lock hands the tick (a session, or just True)
G_co = TypeVar("G_co", covariant=True)
R = TypeVar("R")  # what a tick returns


class TickOutcome(StrEnum):
    RAN = "ran"
    SKIPPED = "skipped"  # another replica holds the lock
    FAILED = "failed"


@dataclass
class TickResult(Generic[R]):
    outcome: TickOutcome
    items: int = 0
    value: R | None = None  # what the tick returned (None unless it ran)


class TickLock(Protocol[G_co]):
    """Makes a tick exclusive across replicas. ``acquire()`` yields what the tick receives,
    or None when another holder has the lock (the tick is skipped)."""

    def acquire(self) -> AbstractAsyncContextManager[G_co | None]: ...


# (loop name, outcome, items, seconds the tick took); must not block.
MetricsHook = Callable[[str, TickOutcome, int, float], None]


@dataclass
class LoopStats:
    """Counters a status page or a test can read; they cover direct run_tick calls too."""

    ticks: int = 0  # ticks that ran to the end
    skipped: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_outcome: TickOutcome | None = None
    last_duration_seconds: float = 0.0


def next_delay(
    interval: float,
    consecutive_failures: int,
    *,
    max_backoff: float,
    jitter: float,
    rand: float,
) -> float:
    """Seconds until the next tick: ``interval`` after a success; after ``n`` failures in a
    row ``interval * 2^n``, capped at ``max(max_backoff, interval)``; then scaled by a factor
    in ``[1 - jitter, 1 + jitter]`` chosen by ``rand`` (uniform in [0, 1))."""
    delay = interval
    if consecutive_failures > 0:
        cap = max(max_backoff, interval)
        # The exponent is bounded first: 2.0**n overflows a float for n above ~1000.
        delay = min(interval * 2.0 ** min(consecutive_failures, 62), cap)
    return max(delay * (1.0 + jitter * (2.0 * rand - 1.0)), 0.0)


class BackgroundLoop(Generic[G, R]):
    """Runs ``tick`` under ``lock`` every ``interval`` seconds until stopped.

    ``count`` turns a tick's result into the number of items it handled (for logs and the
    metrics hook); without it an ``int`` result is the count and anything else counts 0.
    ``log_ticks=False`` leaves logging a tick that did something to the tick itself."""

    def __init__(
        self,
        name: str,
        tick: Callable[[G], Awaitable[R]],
        lock: TickLock[G],
        *,
        interval: float,
        clock: Clock,
        wake: asyncio.Event | None = None,
        count: Callable[[R], int] | None = None,
        metrics: MetricsHook | None = None,
        log_ticks: bool = True,
        jitter: float = 0.1,
        max_backoff: float = 300.0,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self.name = name
        self.interval = interval
        self.wake = wake
        self.stats = LoopStats()
        self._tick = tick
        self._lock = lock
        self._clock = clock
        self._count = count
        self._metrics = metrics
        self._log_ticks = log_ticks
        self._jitter = jitter
        self._max_backoff = max_backoff
        self._random = random
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- one tick ------------------------------------------------------------------------------

    async def run_tick(self) -> TickResult[R]:
        """One tick under the lock. A failure is counted, reported and raised to the caller
        (the loop itself logs it and backs off)."""
        started = self._clock.monotonic()
        try:
            async with self._lock.acquire() as grant:
                if grant is None:
                    result: TickResult[R] = TickResult(TickOutcome.SKIPPED)
                else:
                    value = await self._tick(grant)
                    result = TickResult(TickOutcome.RAN, self._items(value), value)
        except Exception as exc:
            self._record(TickOutcome.FAILED, 0, started, error=exc)
            raise
        self._record(result.outcome, result.items, started)
        return result

    def _items(self, value: R) -> int:
        if self._count is not None:
            return self._count(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def _record(
        self, outcome: TickOutcome, items: int, started: float, error: Exception | None = None
    ) -> None:
        st = self.stats
        st.last_outcome = outcome
        st.last_duration_seconds = max(self._clock.monotonic() - started, 0.0)
        if outcome is TickOutcome.RAN:
            st.ticks += 1
            st.consecutive_failures = 0
        elif outcome is TickOutcome.SKIPPED:
            st.skipped += 1
            st.consecutive_failures = 0  # the lock answered: the database is reachable
        else:
            st.failures += 1
            st.consecutive_failures += 1
            st.last_error = f"{type(error).__name__}: {error}"[:500]
        if self._metrics is not None:
            try:
                self._metrics(self.name, outcome, items, st.last_duration_seconds)
            except Exception as exc:  # a broken metrics sink must not stop the loop
                log.warning("loop_metrics_failed", loop=self.name, error=type(exc).__name__)

    def next_delay(self) -> float:
        """Seconds the loop waits after the tick it just ran (see :func:`next_delay`)."""
        return next_delay(
            self.interval,
            self.stats.consecutive_failures,
            max_backoff=self._max_backoff,
            jitter=self._jitter,
            rand=self._random(),
        )

    # -- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name=f"loop:{self.name}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop at a tick boundary; a tick still running after ``timeout`` is cancelled."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        _, pending = await asyncio.wait([task], timeout=timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stop.is_set():
            if self.wake is not None:
                # Cleared before the tick: a wake-up set while it runs brings the next one on.
                self.wake.clear()
            try:
                result = await self.run_tick()
                if result.items and self._log_ticks:
                    log.info("loop_tick", loop=self.name, items=result.items)
            except Exception as exc:
                log.warning(
                    "loop_tick_failed",
                    loop=self.name,
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                    failures=self.stats.consecutive_failures,
                )
            await self._wait(self.next_delay())

    async def _wait(self, delay: float) -> None:
        """Until ``delay`` passes, the loop is stopped, or (with a wake event) it is woken. A
        wake-up also ends a back-off: it means work was committed, so the database answers."""
        if self.wake is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            return
        waiters = [
            asyncio.create_task(self._stop.wait()),
            asyncio.create_task(self.wake.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
