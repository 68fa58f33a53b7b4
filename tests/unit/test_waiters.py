"""In-process waiters: selective, bounded, oldest first."""

from __future__ import annotations

import asyncio
import uuid

from parity.tasks.wakeups import WakeHub
from parity.waiters import Waiters
from tests.conftest import until


async def test_wait_times_out_without_a_wake():
    w: Waiters[str] = Waiters()
    assert await w.wait("a", 0.01) is False
    assert len(w) == 0


async def test_wake_is_selective_bounded_and_oldest_first():
    w: Waiters[str] = Waiters()
    jobs = [asyncio.create_task(w.wait(k, 5)) for k in ["a", "b", "a", "c"]]
    await until(lambda: len(w) == 4)
    assert w.wake(lambda k: k == "a", limit=1) == ["a"]
    await until(jobs[0].done)
    assert [j.done() for j in jobs] == [True, False, False, False]
    assert sorted(w.wake(lambda k: k != "c")) == ["a", "b"]
    w.wake_all()
    assert await asyncio.gather(*jobs) == [True, True, True, True]


async def test_wake_any_wakes_at_most_one_waiter_per_runner():
    hub = WakeHub()
    r1, r2 = uuid.uuid4(), uuid.uuid4()
    jobs = [asyncio.create_task(hub.wait(r, 5)) for r in [r1, r1, r2]]
    await until(lambda: hub.waiting == 3)
    assert hub.wake_any(3) == 2
    await until(lambda: jobs[0].done() and jobs[2].done())
    assert [j.done() for j in jobs] == [True, False, True]
    assert hub.wake_runner(r1) == 1
    assert await asyncio.gather(*jobs) == [True, True, True]


async def test_a_key_counts_as_waiting_until_its_last_waiter_returns():
    w: Waiters[str] = Waiters()
    jobs = [asyncio.create_task(w.wait("a", 5)) for _ in range(2)]
    await until(lambda: len(w) == 2)
    assert "a" in w and "b" not in w
    w.wake(lambda k: k == "a", limit=1)
    await until(jobs[0].done)
    assert "a" in w  # the second waiter still waits
    w.wake_all()
    await asyncio.gather(*jobs)
    assert "a" not in w and len(w) == 0
    assert await w.wait("b", 0.01) is False and "b" not in w  # a timeout leaves nothing behind


async def test_a_watch_keeps_a_wake_that_came_before_its_wait():
    w: Waiters[str] = Waiters()
    with w.watching("p1") as watch:
        assert "p1" in w
        assert w.wake_key("p1") == 1  # while the watcher is still reading
        assert await watch.wait(5) is True  # not lost: returns at once
        assert await watch.wait(0.01) is False  # re-armed after the wake
        assert w.wake_key("p2") == 0
    assert "p1" not in w and len(w) == 0


async def test_a_resource_watch_wakes_only_for_its_own_resource():
    from parity.events.hub import EventHub

    hub = EventHub()
    with hub.watch_resource("prompt-a") as a, hub.watch_resource("prompt-b") as b:
        hub.publish(["0xowner"], resources=["prompt-b"], deliveries=False)
        assert await b.wait(5) is True
        assert await a.wait(0.01) is False  # the owner's other prompts do not wake it
        hub.wake_readers()  # "wake everything" from another replica reaches it too
        assert await a.wait(5) is True
