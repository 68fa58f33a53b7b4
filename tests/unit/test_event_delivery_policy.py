"""The delivery backoff policy and the in-process event hub."""

from __future__ import annotations

import asyncio

import pytest

from parity.events.delivery import backoff_seconds
from parity.events.hub import EventHub
from tests.conftest import until


@pytest.mark.parametrize("attempts", [1, 2, 5, 11, 12, 30])
def test_backoff_is_two_to_the_attempts_capped_at_an_hour_with_jitter(attempts: int):
    base = min(2.0**attempts, 3600)
    assert backoff_seconds(attempts, 0.0) == pytest.approx(base * 0.8)
    assert backoff_seconds(attempts, 0.5) == pytest.approx(base)
    assert backoff_seconds(attempts, 0.999999) == pytest.approx(base * 1.2, rel=1e-5)


async def test_publish_wakes_the_owners_waiters_and_operators_only():
    hub = EventHub()
    alice = asyncio.create_task(hub.wait("0xa", 5))
    bob = asyncio.create_task(hub.wait("0xb", 0.2))
    operator = asyncio.create_task(hub.wait(None, 5))
    await until(lambda: hub.waiting == 3)
    assert hub.publish(["0xa"]) == 2
    assert await alice is True and await operator is True
    assert await bob is False  # timed out: not woken for someone else's event
    assert hub.delivery_event.is_set() and hub.waiting == 0


async def test_wake_all_releases_every_waiter():
    hub = EventHub()
    waiters = [asyncio.create_task(hub.wait(a, 5)) for a in ("0xa", "0xb", None)]
    await until(lambda: hub.waiting == 3)
    hub.wake_all()
    assert await asyncio.gather(*waiters) == [True, True, True]
