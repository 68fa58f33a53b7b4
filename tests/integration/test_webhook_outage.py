"""A webhook receiver that goes down: a short outage during a burst of events costs nothing
(the endpoint backs off as a whole, stays enabled, and gets every event once it is back);
only one that fails continuously for the breaker's period is disabled, with why and since
when, and re-enabling it sends what is pending at once. Against a real receiver on 127.0.0.1,
one delivery round at a time on a frozen clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select

from parity.clock import FrozenClock, utc_iso
from parity.container import Container
from parity.events.models import Event
from tests.conftest import ALICE, BOB, bearer, sign_in
from tests.integration.queue_helpers import V1, act, claimed, create_task, device, register_runner
from tests.integration.test_event_delivery import (
    MakeReceiver,
    container,
    deliver,
    deliveries,
    receivers,
    subscribe,
)
from tests.integration.webhook_receiver import Receiver

TASK_EVENTS = ["task.created", "task.offered", "task.completed"]

__all__ = ["container", "receivers"]  # fixtures, used by name


async def _subscribe(
    client: httpx.AsyncClient, token: str, receiver: Receiver, events: list[str]
) -> str:
    return str((await subscribe(client, token, receiver, events))["id"])


async def _endpoint(client: httpx.AsyncClient, token: str, hook_id: str) -> dict[str, Any]:
    r = await client.get(f"{V1}/webhooks/{hook_id}", headers=bearer(token))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def _run_task(client: httpx.AsyncClient, owner: str, runner_token: str) -> None:
    """Create a task and run it to completion: task.created, task.offered, task.completed."""
    task = await create_task(client, owner)
    c = await claimed(client, runner_token)
    assert c["task"]["id"] == task["id"]
    r = await act(
        client, runner_token, task["id"], "complete", c["claim_token"], output="ok", exit_code=0
    )
    assert r.status_code == 200, r.text


async def _event_ids(container: Container, owner: str) -> set[str]:
    async with container.db.read_session() as s:
        q = select(Event.id).where(Event.owner_address == owner, Event.type.in_(TASK_EVENTS))
        return {str(i) for i in (await s.scalars(q)).all()}


async def test_a_receiver_down_for_a_burst_of_events_gets_them_all_and_stays_enabled(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver, clock: FrozenClock
):
    alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
    rec = await receivers(fail_first=10**6)  # down (answers 500)
    hook = await _subscribe(client, alice, rec, TASK_EVENTS)
    # A push-capable runner, so every task is offered too: three events per task.
    rt, _ = await register_runner(client, bob, device(), webhook="http://127.0.0.1:9/push")
    for _ in range(4):
        await _run_task(client, alice, rt)

    # Down for a few seconds while the delivery loop runs every second: the endpoint is tried
    # as a whole on its own back-off, not once (or more) per event.
    for _ in range(4):
        await deliver(container)
        clock.advance(1)
    assert 1 <= len(rec.requests) <= 3
    ep = await _endpoint(client, alice, hook)
    assert ep["enabled"] is True and ep["disabled_reason"] is None
    assert ep["consecutive_failures"] == len(rec.requests)
    assert ep["failing_since"] and ep["next_attempt_at"]

    # Events raised while it is failing are still queued for it.
    await _run_task(client, alice, rt)
    queued = await deliveries(client, alice, hook, limit=100)
    assert len(queued) == 15 and {d["status"] for d in queued} == {"pending"}

    rec.fail_first = len(rec.requests)  # back up
    for _ in range(300):  # at most five minutes of rounds, one second apart
        await deliver(container)
        if {r.id for r in rec.events} == await _event_ids(container, ALICE.address.lower()):
            break
        clock.advance(1)
    assert {r.id for r in rec.events} == await _event_ids(container, ALICE.address.lower())
    assert rec.rejected == []
    ep = await _endpoint(client, alice, hook)
    assert ep["enabled"] is True and ep["consecutive_failures"] == 0
    assert ep["failing_since"] is None and ep["next_attempt_at"] is None
    assert {d["status"] for d in await deliveries(client, alice, hook, limit=100)} == {"delivered"}


async def test_an_endpoint_failing_for_days_is_disabled_and_re_enabling_sends_what_is_pending(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver, clock: FrozenClock
):
    # The defaults: disabled once nothing has got through for 72 h, with >= 10 failed attempts.
    assert container.deliveries.disable_after_seconds == 72 * 3600
    assert container.deliveries.disable_min_failures == 10
    alice = await sign_in(client, ALICE)
    rec = await receivers(fail_first=10**6)
    hook = await _subscribe(client, alice, rec, ["task.created"])
    began = clock.now()
    step = timedelta(hours=6.5)

    # An event every 6.5 hours, the endpoint down throughout: one attempt each time.
    while True:
        alice = await sign_in(client, ALICE)  # a session lasts a day
        await create_task(client, alice)
        assert await deliver(container) == 1
        ep = await _endpoint(client, alice, hook)
        if clock.now() - began < timedelta(hours=72):
            assert ep["enabled"] is True, ep
            clock.advance(step.total_seconds())
            continue
        break
    assert len(rec.requests) == 13 and clock.now() - began == 12 * step
    assert ep["enabled"] is False and ep["consecutive_failures"] == 13
    assert ep["disabled_at"] == utc_iso(clock.now())
    assert ep["failing_since"] == utc_iso(began)
    assert "circuit breaker" in ep["disabled_reason"]
    assert utc_iso(began) in ep["disabled_reason"] and "HTTP 500" in ep["disabled_reason"]

    # Disabled: not called, and new events are not queued for it.
    rec.fail_first = 0  # the receiver is back
    await create_task(client, alice)
    assert await deliver(container) == 0 and len(rec.requests) == 13
    listed = await deliveries(client, alice, hook, limit=100)
    assert len(listed) == 13
    # The tries went to whichever delivery was due first: none used up its eight attempts.
    assert {d["status"] for d in listed} == {"pending"}
    assert sum(d["attempts"] for d in listed) == 13 and max(d["attempts"] for d in listed) < 8
    pending = {d["event_id"] for d in listed}

    r = await client.put(f"{V1}/webhooks/{hook}", json={"enabled": True}, headers=bearer(alice))
    assert r.status_code == 200, r.text
    on = r.json()
    assert on["enabled"] is True and on["disabled_reason"] is None and on["disabled_at"] is None
    assert on["consecutive_failures"] == 0 and on["failing_since"] is None
    # What was pending is due at once, whatever its own retry time.
    for _ in range(20):
        if await deliver(container) == 0:
            break
    assert {r.id for r in rec.events} == pending
