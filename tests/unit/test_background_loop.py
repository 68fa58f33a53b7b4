"""The one background loop: ticks, stop at a tick boundary, a stuck tick cancelled after the stop
timeout, error back-off that grows and resets, wake-ups before the interval, and the metrics
hook. No database: the lock strategies that need one are in
tests/integration/test_background_loop_locks.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from parity.clock import FrozenClock
from parity.jobs.locks import NoLock
from parity.jobs.loop import BackgroundLoop, TickOutcome, next_delay
from tests.conftest import until

Seen = list[tuple[str, TickOutcome, int, float]]


def make_loop(
    tick: Callable[[bool], Awaitable[int]],
    *,
    interval: float = 3600.0,
    wake: asyncio.Event | None = None,
    seen: Seen | None = None,
    max_backoff: float = 300.0,
    jitter: float = 0.0,
) -> BackgroundLoop[bool, int]:
    def record(name: str, outcome: TickOutcome, items: int, seconds: float) -> None:
        if seen is not None:
            seen.append((name, outcome, items, seconds))

    return BackgroundLoop(
        "probe",
        tick,
        NoLock(),
        interval=interval,
        clock=FrozenClock(),
        wake=wake,
        metrics=record,
        max_backoff=max_backoff,
        jitter=jitter,
        random=lambda: 0.5,
    )


async def test_stop_waits_for_the_running_tick_to_finish():
    gate = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []

    async def tick(_: bool) -> int:
        started.append(1)
        await gate.wait()
        finished.append(1)
        return 1

    loop = make_loop(tick, interval=0.0)
    loop.start()
    await until(lambda: started == [1])
    stopping = asyncio.create_task(loop.stop(timeout=60))
    await until(lambda: loop.stopping)
    assert not stopping.done()  # held at the tick boundary, not cancelled
    gate.set()
    await stopping
    # The tick ran to its end and no further tick started, although the interval is 0.
    assert finished == [1] and started == [1]
    assert loop.stats.ticks == 1 and not loop.running


async def test_stop_cancels_a_tick_stuck_past_the_timeout():
    cancelled: list[bool] = []
    started: list[int] = []

    async def tick(_: bool) -> int:
        started.append(1)
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return 0

    loop = make_loop(tick)
    loop.start()
    await until(lambda: started == [1])
    await loop.stop(timeout=0.05)
    assert cancelled == [True] and not loop.running
    assert loop.stats.ticks == 0 and loop.stats.failures == 0  # a cancel is not a failure


def test_backoff_doubles_per_failure_up_to_the_cap():
    delays = [next_delay(1.0, n, max_backoff=8.0, jitter=0.0, rand=0.5) for n in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    # The cap never shortens the normal interval, and a huge failure count does not overflow.
    assert next_delay(60.0, 3, max_backoff=10.0, jitter=0.0, rand=0.5) == 60.0
    assert next_delay(1.0, 10_000, max_backoff=300.0, jitter=0.0, rand=0.5) == 300.0


def test_jitter_stays_within_its_band():
    low = next_delay(10.0, 0, max_backoff=300.0, jitter=0.1, rand=0.0)
    high = next_delay(10.0, 0, max_backoff=300.0, jitter=0.1, rand=0.999999)
    assert low == pytest.approx(9.0) and high == pytest.approx(11.0, rel=1e-5)


async def test_error_backoff_grows_with_failures_and_resets_after_a_success():
    fail = [True, True, True, False, True]

    async def tick(_: bool) -> int:
        if fail.pop(0):
            raise RuntimeError("database down")
        return 2

    loop = make_loop(tick, interval=1.0, max_backoff=8.0)
    delays = []
    for _ in range(5):
        with contextlib.suppress(RuntimeError):
            await loop.run_tick()
        delays.append(loop.next_delay())
    assert delays == [2.0, 4.0, 8.0, 1.0, 2.0]
    assert loop.stats.failures == 4 and loop.stats.ticks == 1
    assert loop.stats.last_error == "RuntimeError: database down"


async def test_a_failing_tick_is_reported_and_the_loop_keeps_ticking():
    seen: Seen = []
    calls: list[int] = []

    async def tick(_: bool) -> int:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("boom")
        return 3

    loop = make_loop(tick, interval=0.001, seen=seen, max_backoff=0.01)
    loop.start()
    await until(lambda: loop.stats.ticks >= 1)
    await loop.stop(timeout=5)
    outcomes = [outcome for _, outcome, _, _ in seen]
    assert outcomes[:3] == [TickOutcome.FAILED, TickOutcome.FAILED, TickOutcome.RAN]
    assert seen[2][0] == "probe" and seen[2][2] == 3
    assert loop.stats.consecutive_failures == 0


async def test_the_wake_event_brings_a_tick_before_the_interval():
    wake = asyncio.Event()
    ticks: list[int] = []

    async def tick(_: bool) -> int:
        ticks.append(1)
        return 0

    loop = make_loop(tick, interval=3600.0, wake=wake)
    loop.start()
    try:
        await until(lambda: len(ticks) == 1)  # the first tick runs at start
        wake.set()
        await until(lambda: len(ticks) == 2)  # long before an hour
        assert not wake.is_set()  # consumed by the tick it brought
    finally:
        await loop.stop(timeout=5)


async def test_a_wake_up_during_a_tick_brings_one_more_tick():
    wake = asyncio.Event()
    gate = asyncio.Event()
    ticks: list[int] = []

    async def tick(_: bool) -> int:
        ticks.append(1)
        if len(ticks) == 1:
            await gate.wait()
        return 0

    loop = make_loop(tick, interval=3600.0, wake=wake)
    loop.start()
    try:
        await until(lambda: len(ticks) == 1)
        wake.set()  # work committed while the first tick runs
        gate.set()
        await until(lambda: len(ticks) == 2)
    finally:
        await loop.stop(timeout=5)


async def test_the_metrics_hook_sees_every_outcome_and_a_broken_hook_is_harmless():
    seen: Seen = []
    results: list[int | Exception] = [4, RuntimeError("x")]

    async def tick(_: bool) -> int:
        r = results.pop(0)
        if isinstance(r, Exception):
            raise r
        return r

    loop = make_loop(tick, seen=seen)
    assert (await loop.run_tick()).items == 4
    with pytest.raises(RuntimeError):
        await loop.run_tick()
    assert [(o, n) for _, o, n, _ in seen] == [(TickOutcome.RAN, 4), (TickOutcome.FAILED, 0)]

    def broken(*_: object) -> None:
        raise ValueError("metrics sink down")

    async def ok(_: bool) -> int:
        return 1

    quiet = BackgroundLoop("q", ok, NoLock(), interval=1.0, clock=FrozenClock(), metrics=broken)
    assert (await quiet.run_tick()).outcome is TickOutcome.RAN
    assert quiet.stats.ticks == 1


class HeldElsewhere:
    """A lock another replica holds: never granted."""

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[bool | None]:
        yield None


async def test_a_tick_is_skipped_while_the_lock_is_held_elsewhere():
    seen: Seen = []
    ran: list[int] = []

    async def tick(_: bool) -> int:
        ran.append(1)
        return 1

    loop: BackgroundLoop[bool, int] = BackgroundLoop(
        "held",
        tick,
        HeldElsewhere(),
        interval=1.0,
        clock=FrozenClock(),
        metrics=lambda *args: seen.append(args),
    )
    res = await loop.run_tick()
    assert res.outcome is TickOutcome.SKIPPED and ran == []
    assert loop.stats.skipped == 1 and seen == [("held", TickOutcome.SKIPPED, 0, 0.0)]
