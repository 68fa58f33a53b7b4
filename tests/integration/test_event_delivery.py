"""Event webhooks end to end, against a real receiver on 127.0.0.1: what reaches whom,
signatures, retries with backoff, the attempt log, redelivery, per-endpoint back-off, secret
rotation, the SSRF guard, the delivery loop, retention, and GET /events (long-poll and SSE)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.events import service as events_service
from parity.events.delivery import DeliveryDeps, DeliveryLoop, deliver_due, record, send, take_due
from parity.events.models import Event, WebhookDelivery, WebhookDeliveryAttempt
from parity.jobs.runner import JobRunner
from parity.retention import retention_job
from tests.conftest import ADMIN, ALICE, BOB, bearer, make_settings, sign_in, until
from tests.integration.queue_helpers import (
    V1,
    act,
    claimed,
    create_task,
    device,
    heartbeat,
    register_runner,
    sweep_liveness,
)
from tests.integration.webhook_receiver import Receiver, serve

TASK_EVENTS = [
    "task.created",
    "task.offered",
    "task.completed",
    "task.retrying",
    "task.failed",
    "task.cancelled",
]

MakeReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def container(
    database_url: str, tmp_path: Path, clock: FrozenClock
) -> AsyncIterator[Container]:
    # The receivers live on 127.0.0.1, so private targets are allowed (PostgreSQL runs
    # default to refusing them); the refusal has its own test.
    settings = make_settings(database_url, tmp_path / "home", webhook_allow_private="true")
    c = Container(settings=settings, db=Database(settings.resolved_database_url), clock=clock)
    yield c
    await c.db.dispose()


@pytest.fixture
async def receivers(clock: FrozenClock) -> AsyncIterator[MakeReceiver]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(fail_first: int = 0) -> Receiver:
            r = Receiver(
                secrets=[], now=lambda: int(clock.now().timestamp()), fail_first=fail_first
            )
            return await stack.enter_async_context(serve(r))

        yield make


async def subscribe(
    client: httpx.AsyncClient, token: str, receiver: Receiver, events: list[str]
) -> dict[str, Any]:
    r = await client.post(
        f"{V1}/webhooks", json={"url": receiver.url, "events": events}, headers=bearer(token)
    )
    assert r.status_code == 201, r.text
    hook: dict[str, Any] = r.json()
    receiver.secrets = [hook["secret"]]
    return hook


async def deliver(container: Container, deps: DeliveryDeps | None = None) -> int:
    return await deliver_due(container.db, deps or container.deliveries)


async def deliver_all(container: Container) -> None:
    for _ in range(50):
        if await deliver(container) == 0:
            return
    raise AssertionError("deliveries never ran out")


async def deliveries(
    client: httpx.AsyncClient, token: str, hook_id: str, limit: int | None = None
) -> list[dict[str, Any]]:
    params = {} if limit is None else {"limit": limit}
    r = await client.get(
        f"{V1}/webhooks/{hook_id}/deliveries", params=params, headers=bearer(token)
    )
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_every_task_event_of_a_tasks_life_reaches_its_owner_signed(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver
):
    alice = await sign_in(client, ALICE)
    bob = await sign_in(client, BOB)
    rec = await receivers()
    await subscribe(client, alice, rec, TASK_EVENTS)
    # A push-capable runner (BOB's) gets the offers.
    rt, _ = await register_runner(
        client, bob, device(), max_concurrent_tasks=4, webhook="http://127.0.0.1:9/push"
    )

    done = await create_task(client, alice, title="done")
    c = await claimed(client, rt)
    assert c["task"]["id"] == done["id"]
    assert (await act(client, rt, done["id"], "start", c["claim_token"])).status_code == 200
    r = await act(client, rt, done["id"], "complete", c["claim_token"], output="hi", exit_code=0)
    assert r.status_code == 200, r.text

    retried = await create_task(client, alice, title="retried", max_attempts=2)
    c = await claimed(client, rt)
    r = await act(client, rt, retried["id"], "fail", c["claim_token"], error="boom")
    assert r.status_code == 200 and r.json()["status"] == "pending"

    failed = await create_task(client, alice, title="failed", max_attempts=1)
    c = await claimed(client, rt)
    r = await act(client, rt, failed["id"], "fail", c["claim_token"], error="bust")
    assert r.status_code == 200 and r.json()["status"] == "failed"

    cancelled = await create_task(client, alice, title="cancelled")
    r = await client.delete(f"{V1}/tasks/{cancelled['id']}", headers=bearer(alice))
    assert r.json()["status"] == "cancelled"

    await deliver_all(container)
    assert rec.rejected == [] and rec.duplicates == []
    by_task: dict[str, dict[str, dict[str, Any]]] = {}
    for got in rec.events:
        env = got.json
        assert set(env) == {"id", "type", "created_at", "data"}
        assert env["id"] == got.headers["webhook-id"]
        by_task.setdefault(env["data"]["task_id"], {})[env["type"]] = env["data"]
    assert set(by_task[done["id"]]) == {"task.created", "task.offered", "task.completed"}
    assert set(by_task[retried["id"]]) == {"task.created", "task.offered", "task.retrying"}
    assert set(by_task[failed["id"]]) == {"task.created", "task.offered", "task.failed"}
    assert set(by_task[cancelled["id"]]) == {"task.created", "task.offered", "task.cancelled"}
    retry = by_task[retried["id"]]["task.retrying"]
    assert retry["attempts"] == 1 and retry["max_attempts"] == 2
    assert retry["last_error"] == "boom" and retry["status"] == "pending" and retry["available_at"]
    assert retry["available_at"].endswith("Z")  # UTC written as the JSON API writes it
    final = by_task[failed["id"]]["task.failed"]
    assert final["status"] == "failed" and final["last_error"] == "bust"
    assert by_task[done["id"]]["task.completed"]["status"] == "completed"
    assert by_task[done["id"]]["task.created"]["title"] == "done"
    assert by_task[done["id"]]["task.offered"]["runner_id"] == c["task"]["runner_id"]


async def test_events_reach_only_their_owner_and_every_admin_endpoint(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver
):
    alice, bob, admin = [await sign_in(client, a) for a in (ALICE, BOB, ADMIN)]
    rec_alice, rec_bob, rec_admin = await receivers(), await receivers(), await receivers()
    await subscribe(client, alice, rec_alice, ["task.created"])
    await subscribe(client, bob, rec_bob, ["task.created"])
    await subscribe(client, admin, rec_admin, ["task.created", "task.cancelled"])

    mine = await create_task(client, alice)
    await client.delete(f"{V1}/tasks/{mine['id']}", headers=bearer(alice))
    await deliver_all(container)
    assert [r.json["data"]["task_id"] for r in rec_alice.events] == [mine["id"]]
    assert rec_bob.requests == []
    assert sorted(rec_admin.types()) == ["task.cancelled", "task.created"]

    theirs = await create_task(client, bob)
    await deliver_all(container)
    assert [r.json["data"]["task_id"] for r in rec_bob.events] == [theirs["id"]]
    assert len(rec_alice.events) == 1
    assert {r.json["data"]["task_id"] for r in rec_admin.events} == {mine["id"], theirs["id"]}


async def test_a_completion_reaches_the_owners_and_operators_endpoints_subscribed_to_it(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver
):
    # On PostgreSQL the completion, its event and its deliveries are one statement: the same
    # fan-out rules must hold there as in the general path.
    alice, bob, admin = [await sign_in(client, a) for a in (ALICE, BOB, ADMIN)]
    rec_owner, rec_admin = await receivers(), await receivers()
    rec_other_type, rec_disabled, rec_bob = await receivers(), await receivers(), await receivers()
    await subscribe(client, alice, rec_owner, ["task.completed"])
    await subscribe(client, admin, rec_admin, ["task.completed"])
    await subscribe(client, alice, rec_other_type, ["task.failed"])
    off = await subscribe(client, alice, rec_disabled, ["task.completed"])
    r = await client.put(
        f"{V1}/webhooks/{off['id']}", json={"enabled": False}, headers=bearer(alice)
    )
    assert r.status_code == 200 and r.json()["enabled"] is False, r.text
    await subscribe(client, bob, rec_bob, ["task.completed"])
    rt, _ = await register_runner(client, bob, device())

    t = await create_task(client, alice, title="fan-out")
    c = await claimed(client, rt)
    r = await act(client, rt, t["id"], "complete", c["claim_token"], output="ok", exit_code=0)
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    await deliver_all(container)

    expected = {"task_id": t["id"], "status": "completed", "title": "fan-out", "attempts": 1}
    for rec in (rec_owner, rec_admin):
        assert [e.json["type"] for e in rec.events] == ["task.completed"]
        assert rec.events[0].json["data"] == expected
    assert rec_owner.events[0].json["id"] == rec_admin.events[0].json["id"]  # one event
    assert rec_other_type.requests == [] and rec_disabled.requests == []
    assert rec_bob.requests == []  # the runner's owner is not the task's owner
    async with container.db.read_session() as s:
        event = await s.scalar(select(Event).where(Event.type == "task.completed"))
        assert event is not None
        assert event.owner_address == ALICE.address.lower() and event.resource_id == t["id"]
        n = await s.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.event_id == event.id)
        )
        assert n == 2


async def test_an_endpoint_gets_only_the_types_it_subscribed_to(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver
):
    alice = await sign_in(client, ALICE)
    rec = await receivers()
    await subscribe(client, alice, rec, ["task.cancelled"])
    t = await create_task(client, alice)
    await client.delete(f"{V1}/tasks/{t['id']}", headers=bearer(alice))
    await deliver_all(container)
    assert rec.types() == ["task.cancelled"]


async def test_a_receiver_that_fails_twice_gets_the_event_on_the_third_attempt(
    client: httpx.AsyncClient,
    container: Container,
    receivers: MakeReceiver,
    clock: FrozenClock,
):
    alice = await sign_in(client, ALICE)
    rec = await receivers(fail_first=2)
    hook = await subscribe(client, alice, rec, ["task.created"])
    task = await create_task(client, alice)

    assert await deliver(container) == 1
    [d] = await deliveries(client, alice, hook["id"])
    assert d["status"] == "pending" and d["attempts"] == 1 and d["last_status_code"] == 500
    assert d["last_error"] == "HTTP 500" and d["next_attempt_at"]
    assert await deliver(container) == 0  # backing off: nothing due yet
    clock.advance(3)  # first backoff: 2 s x jitter <= 2.4 s
    assert await deliver(container) == 1
    assert await deliver(container) == 0
    clock.advance(5)  # second backoff: 4 s x jitter <= 4.8 s
    assert await deliver(container) == 1

    assert len(rec.requests) == 3 and len(rec.events) == 1
    assert {r.id for r in rec.requests} == {rec.events[0].id}  # one webhook-id for all tries
    assert rec.events[0].json["data"]["task_id"] == task["id"]
    [d] = await deliveries(client, alice, hook["id"])
    assert d["status"] == "delivered" and d["attempts"] == 3 and d["delivered_at"]
    assert d["event_type"] == "task.created" and d["next_attempt_at"] is None
    assert [a["attempt"] for a in d["attempt_log"]] == [1, 2, 3]
    assert [a["status_code"] for a in d["attempt_log"]] == [500, 500, 200]
    assert [a["error"] for a in d["attempt_log"]] == ["HTTP 500", "HTTP 500", None]
    got = await client.get(f"{V1}/webhooks/{hook['id']}", headers=bearer(alice))
    assert got.json()["consecutive_failures"] == 0  # the success reset the counter


async def test_a_delivery_is_retried_until_its_retry_window_has_passed(
    client: httpx.AsyncClient,
    container: Container,
    receivers: MakeReceiver,
    clock: FrozenClock,
):
    """Retried on its back-off (at most an hour apart) for WEBHOOK_RETRY_HOURS (72) after it
    was queued, however many attempts that takes; an attempt that fails after that is its
    last."""
    alice = await sign_in(client, ALICE)
    rec = await receivers(fail_first=1000)
    hook = await subscribe(client, alice, rec, ["task.created"])
    await create_task(client, alice)
    for _ in range(12):
        assert await deliver(container) == 1
        clock.advance(3600 * 1.2 + 1)
    [d] = await deliveries(client, alice, hook["id"])
    assert d["status"] == "pending" and d["attempts"] == 12
    clock.advance(72 * 3600)
    assert await deliver(container) == 1
    assert await deliver(container) == 0
    alice = await sign_in(client, ALICE)  # the session expired meanwhile
    [d] = await deliveries(client, alice, hook["id"])
    assert d["status"] == "failed" and d["attempts"] == 13 and len(d["attempt_log"]) == 13
    assert len(rec.requests) == 13


async def test_redeliver_sends_the_event_again_with_the_same_webhook_id(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver
):
    alice, bob, admin = [await sign_in(client, a) for a in (ALICE, BOB, ADMIN)]
    rec = await receivers()
    hook = await subscribe(client, alice, rec, ["task.created"])
    await create_task(client, alice)
    await deliver_all(container)
    [first] = await deliveries(client, alice, hook["id"])
    path = f"{V1}/webhooks/deliveries/{first['id']}/redeliver"

    assert (await client.post(path, headers=bearer(bob))).status_code == 404
    r = await client.post(path, headers=bearer(alice))
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending" and r.json()["event_id"] == first["event_id"]
    assert r.json()["id"] != first["id"]
    assert (await client.post(path, headers=bearer(admin))).status_code == 202
    await deliver_all(container)

    assert len(rec.requests) == 3
    assert {x.id for x in rec.requests} == {first["event_id"]}
    assert len(rec.events) == 1 and len(rec.duplicates) == 2  # the receiver de-duplicates
    listed = await deliveries(client, alice, hook["id"])
    assert [x["status"] for x in listed] == ["delivered"] * 3


async def test_a_redelivery_to_a_failing_endpoint_goes_before_its_backlog(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver, clock: FrozenClock
):
    """A failing endpoint is tried one delivery at a time; the one asked for by hand is that
    one ("sent at once even while the endpoint backs off"), not the oldest of its backlog."""
    alice = await sign_in(client, ALICE)
    rec = await receivers(fail_first=10_000)
    hook = await subscribe(client, alice, rec, ["task.created"])
    for i in range(3):
        await create_task(client, alice, title=f"t{i}")
    await deliver_all(container)
    clock.advance(3600)  # every delivery and the endpoint's back-off are due again
    newest = (await deliveries(client, alice, hook["id"]))[0]
    path = f"{V1}/webhooks/deliveries/{newest['id']}/redeliver"
    r = await client.post(path, headers=bearer(alice))
    assert r.status_code == 202, r.text
    sent = len(rec.requests)

    assert await deliver(container) == 1
    assert len(rec.requests) == sent + 1
    assert rec.requests[-1].id == newest["event_id"]
    listed = {d["id"]: d for d in await deliveries(client, alice, hook["id"])}
    assert listed[r.json()["id"]]["attempts"] == 1


async def test_a_failing_endpoint_backs_off_as_a_whole_while_a_healthy_one_receives(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    dead, healthy = await receivers(fail_first=10_000), await receivers()
    dead_hook = await subscribe(client, alice, dead, ["task.created"])
    await subscribe(client, alice, healthy, ["task.created"])
    for i in range(12):
        await create_task(client, alice, title=f"t{i}")

    # At most two deliveries per endpoint per round (per-endpoint concurrency).
    assert await deliver(container) == 4
    assert len(dead.requests) == 2 and len(healthy.events) == 2
    # The failing endpoint waits out its own back-off: its other ten events do not each try it.
    await deliver_all(container)
    assert len(dead.requests) == 2
    assert len(healthy.events) == 12
    got = (await client.get(f"{V1}/webhooks/{dead_hook['id']}", headers=bearer(alice))).json()
    assert got["enabled"] is True and got["consecutive_failures"] == 2
    assert got["failing_since"] and got["next_attempt_at"] and got["disabled_reason"] is None

    # Past the back-off (2^2 s x jitter <= 4.8 s) one delivery tries it, not two.
    clock.advance(5)
    assert await deliver(container) == 1
    assert len(dead.requests) == 3
    assert await deliver(container) == 0

    # Re-enabling an enabled endpoint resets its back-off: it is tried at once.
    dead.fail_first = 0
    on = await client.put(
        f"{V1}/webhooks/{dead_hook['id']}", json={"enabled": True}, headers=bearer(alice)
    )
    assert on.json()["consecutive_failures"] == 0 and on.json()["next_attempt_at"] is None
    assert await deliver(container) >= 1
    await deliver_all(container)
    clock.advance(10)  # the three that failed wait out their own (per-delivery) back-off
    await deliver_all(container)
    assert len(dead.events) == 12


async def test_during_rotation_both_secrets_verify(
    client: httpx.AsyncClient,
    container: Container,
    receivers: MakeReceiver,
    clock: FrozenClock,
):
    alice = await sign_in(client, ALICE)
    rec = await receivers()
    hook = await subscribe(client, alice, rec, ["task.created"])
    old = hook["secret"]
    r = await client.post(f"{V1}/webhooks/{hook['id']}/rotate-secret", headers=bearer(alice))
    new = r.json()["secret"]

    rec.secrets = [old]  # a receiver not yet updated
    await create_task(client, alice)
    await deliver_all(container)
    assert len(rec.events) == 1 and rec.rejected == []
    sigs = rec.events[0].headers["webhook-signature"].split(" ")
    assert len(sigs) == 2 and all(s.startswith("v1,") for s in sigs)

    rec.secrets = [new]  # an updated receiver
    await create_task(client, alice)
    await deliver_all(container)
    assert len(rec.events) == 2 and rec.rejected == []

    clock.advance(24 * 3600 + 1)  # the overlap is over: only the new secret signs
    alice = await sign_in(client, ALICE)  # the session expired too
    rec.secrets = [old]
    await create_task(client, alice)
    await deliver_all(container)
    assert len(rec.events) == 2 and len(rec.rejected) == 1
    assert len(rec.rejected[0][0].headers["webhook-signature"].split(" ")) == 1
    rec.secrets = [new]
    [latest, *_] = await deliveries(client, alice, hook["id"])
    await client.post(f"{V1}/webhooks/deliveries/{latest['id']}/redeliver", headers=bearer(alice))
    await deliver_all(container)
    assert len(rec.events) == 3


async def test_a_private_receiver_is_refused_unless_private_targets_are_allowed(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver
):
    alice = await sign_in(client, ALICE)
    rec = await receivers()
    hook = await subscribe(client, alice, rec, ["task.created"])  # allowed: accepted
    await create_task(client, alice)
    refusing = dataclasses.replace(container.deliveries, allow_private=False)
    assert await deliver(container, refusing) == 1
    assert rec.requests == []
    [d] = await deliveries(client, alice, hook["id"])
    assert d["status"] == "pending" and d["last_status_code"] is None
    assert d["last_error"].startswith("refused: ") and "loopback" in d["last_error"]
    container.clock.advance(3)  # type: ignore[attr-defined]
    assert await deliver(container) == 1  # allowed again: delivered
    assert len(rec.events) == 1

    s = make_settings(
        container.settings.resolved_database_url,
        container.settings.home,
        webhook_allow_private="false",
    )
    strict = Container(settings=s, db=container.db, clock=container.clock)
    assert strict.deliveries.allow_private is False
    assert strict.events.allow_private_webhooks is False


async def test_a_hanging_endpoint_does_not_delay_a_healthy_one(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver
):
    release = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await release.wait()
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    alice = await sign_in(client, ALICE)
    healthy = await receivers()
    r = await client.post(
        f"{V1}/webhooks",
        json={"url": f"http://127.0.0.1:{port}/hook", "events": ["task.created"]},
        headers=bearer(alice),
    )
    stuck_id = r.json()["id"]
    await subscribe(client, alice, healthy, ["task.created"])
    deps = dataclasses.replace(container.deliveries, timeout_seconds=3.0)
    loop = DeliveryLoop(container.db, deps, container.event_hub.delivery_event, interval=0.1)
    loop.start()
    try:
        await create_task(client, alice)  # after commit the loop is woken
        await until(lambda: healthy.events)
        assert len(healthy.events) == 1
        # The hanging POST is still in flight: no attempt recorded for it yet.
        [stuck] = await deliveries(client, alice, stuck_id)
        assert stuck["attempts"] == 0 and stuck["status"] == "pending"

        async def stuck_attempted() -> bool:
            [stuck] = await deliveries(client, alice, stuck_id)
            return bool(stuck["attempts"])

        await until(stuck_attempted)
        [stuck] = await deliveries(client, alice, stuck_id)
        assert stuck["last_error"] == "timed out after 3s"
    finally:
        release.set()
        await loop.stop()
        server.close()
        await server.wait_closed()


async def test_an_endpoint_deleted_while_its_post_is_in_flight_is_recorded_without_error(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver
):
    alice = await sign_in(client, ALICE)
    gone, kept = await receivers(), await receivers()
    gone_hook = await subscribe(client, alice, gone, ["task.created"])
    kept_hook = await subscribe(client, alice, kept, ["task.created"])
    await create_task(client, alice)
    deps = container.deliveries
    items = await take_due(container.db, deps)
    assert len(items) == 2
    assert await take_due(container.db, deps) == []  # claimed: not handed out twice
    r = await client.delete(f"{V1}/webhooks/{gone_hook['id']}", headers=bearer(alice))
    assert r.status_code == 204
    await record(container.db, deps, [await send(i, deps) for i in items])
    [d] = await deliveries(client, alice, kept_hook["id"])
    assert d["status"] == "delivered" and len(gone.events) == len(kept.events) == 1


async def test_runner_offline_reaches_the_runners_owner(
    client: httpx.AsyncClient,
    container: Container,
    receivers: MakeReceiver,
    clock: FrozenClock,
):
    alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
    rec_bob, rec_alice = await receivers(), await receivers()
    await subscribe(client, bob, rec_bob, ["runner.offline"])
    await subscribe(client, alice, rec_alice, ["runner.offline"])
    reporting_device, silent_device = device(), device()
    rt, reg = await register_runner(client, bob, reporting_device)
    _, silent = await register_runner(client, bob, silent_device)

    assert (await heartbeat(client, rt, status="offline")).status_code == 200
    assert (await heartbeat(client, rt, status="offline")).status_code == 200  # no repeat
    clock.advance(container.settings.offline_timeout_seconds + 1)
    assert await sweep_liveness(container, container.settings.offline_timeout_seconds) >= 1
    await deliver_all(container)

    got = {r.json["data"]["device_id"]: r.json["data"] for r in rec_bob.events}
    assert set(got) == {reporting_device, silent_device}
    assert got[reporting_device] == {
        "runner_id": reg["runner"]["id"],
        "device_id": reporting_device,
        "reason": "reported",
    }
    assert got[silent_device]["reason"] == "heartbeat_timeout"
    assert got[silent_device]["runner_id"] == silent["runner"]["id"]
    assert rec_alice.requests == []


async def test_an_event_rolled_back_with_its_transaction_is_never_delivered(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver
):
    alice = await sign_in(client, ALICE)
    rec = await receivers()
    await subscribe(client, alice, rec, ["task.created"])
    async with container.db.write_session() as s:
        await events_service.emit(
            s, container.events, "task.created", ALICE.address, {"task_id": "x"}, "x"
        )
        await s.rollback()
    assert await deliver(container) == 0
    async with container.db.read_session() as s:
        assert await s.scalar(select(func.count()).select_from(Event)) == 0


async def test_retention_prunes_old_events_and_finished_deliveries(
    client: httpx.AsyncClient,
    container: Container,
    receivers: MakeReceiver,
    clock: FrozenClock,
):
    alice = await sign_in(client, ALICE)
    rec = await receivers(fail_first=1)
    await subscribe(client, alice, rec, ["task.created"])
    await create_task(client, alice)
    await deliver(container)
    clock.advance(3)
    await deliver(container)
    clock.advance(31 * 86400)
    fresh = await create_task(client, await sign_in(client, ALICE))
    runner = JobRunner(container.db, clock, [retention_job(60, 30)])
    await runner.run_tick(runner.jobs[0])
    async with container.db.read_session() as s:
        events = (await s.scalars(select(Event))).all()
        assert [e.resource_id for e in events] == [fresh["id"]]
        assert await s.scalar(select(func.count()).select_from(WebhookDeliveryAttempt)) == 0
        [left] = (await s.scalars(select(WebhookDelivery))).all()
        assert left.event_id == events[0].id and left.status == "pending"


# -- GET /events


async def test_events_long_poll_returns_an_event_created_while_waiting(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    poll = asyncio.create_task(
        client.get(f"{V1}/events", params={"wait": 10}, headers=bearer(alice))
    )
    await until(lambda: container.event_hub.waiting == 1)
    assert not poll.done()
    task = await create_task(client, alice)
    clock.advance(2)  # past the visibility lag
    r = await asyncio.wait_for(poll, timeout=9)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["type"] for i in body["items"]] == ["task.created"]
    item = body["items"][0]
    assert set(item) == {"seq", "id", "type", "created_at", "data"}
    assert item["data"]["task_id"] == task["id"]
    assert body["next_after"] == item["seq"]


async def test_events_honour_after_types_and_ownership(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice, bob, admin = [await sign_in(client, a) for a in (ALICE, BOB, ADMIN)]
    first = await create_task(client, alice)
    clock.advance(2)
    r = await client.get(f"{V1}/events", headers=bearer(alice))
    after = r.json()["next_after"]
    assert [i["data"]["task_id"] for i in r.json()["items"]] == [first["id"]]

    empty = await client.get(f"{V1}/events", params={"after": after}, headers=bearer(alice))
    assert empty.json() == {"items": [], "next_after": after}

    second = await create_task(client, alice)
    await client.delete(f"{V1}/tasks/{second['id']}", headers=bearer(alice))
    theirs = await create_task(client, bob)
    clock.advance(2)
    r = await client.get(f"{V1}/events", params={"after": after}, headers=bearer(alice))
    assert [(i["type"], i["data"]["task_id"]) for i in r.json()["items"]] == [
        ("task.created", second["id"]),
        ("task.cancelled", second["id"]),
    ]
    only = await client.get(
        f"{V1}/events", params={"types": "task.cancelled"}, headers=bearer(alice)
    )
    assert [i["type"] for i in only.json()["items"]] == ["task.cancelled"]
    b = await client.get(f"{V1}/events", headers=bearer(bob))
    assert [i["data"]["task_id"] for i in b.json()["items"]] == [theirs["id"]]
    every = await client.get(f"{V1}/events", headers=bearer(admin))
    assert len(every.json()["items"]) == 4


async def test_events_younger_than_the_visibility_lag_wait(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    await create_task(client, alice)
    r = await client.get(f"{V1}/events", headers=bearer(alice))
    assert r.json() == {"items": [], "next_after": 0}
    clock.advance(1)
    r = await client.get(f"{V1}/events", headers=bearer(alice))
    assert len(r.json()["items"]) == 1


def _frames(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            out.append(fields)
    return out


async def test_sse_yields_event_lines_and_ends_with_a_terminal_event_on_shutdown(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    task = await create_task(client, alice)
    clock.advance(2)
    headers = {**bearer(alice), "Accept": "text/event-stream"}
    stream = asyncio.create_task(client.get(f"{V1}/events", headers=headers))
    await until(lambda: container.event_hub.waiting == 1)  # the backlog is sent
    container.draining = True
    container.event_hub.wake_all()
    r = await asyncio.wait_for(stream, timeout=10)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "event: task.created" in r.text
    frames = _frames(r.text)
    assert [f["event"] for f in frames] == ["task.created", "end"]
    env = json.loads(frames[0]["data"])
    assert set(env) == {"id", "type", "created_at", "data"}
    assert env["data"]["task_id"] == task["id"] and int(frames[0]["id"]) >= 1
    assert json.loads(frames[1]["data"])["reason"] == "shutdown"


async def test_sse_resumes_after_last_event_id_and_ends_after_its_time_limit(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    await create_task(client, alice)
    clock.advance(2)
    r = await client.get(f"{V1}/events", headers=bearer(alice))
    seen = r.json()["next_after"]
    later = await create_task(client, alice)
    clock.advance(2)
    headers = {**bearer(alice), "Accept": "text/event-stream", "Last-Event-ID": str(seen)}
    # An EventSource reconnects to the URL it opened (`?after=0` here) and adds the header:
    # the header says where to resume.
    stream = asyncio.create_task(client.get(f"{V1}/events", params={"after": 0}, headers=headers))
    await until(lambda: container.event_hub.waiting == 1)  # the backlog is sent
    clock.advance(1801)
    container.event_hub.wake_all()
    r = await asyncio.wait_for(stream, timeout=10)
    frames = _frames(r.text)
    assert [f["event"] for f in frames] == ["task.created", "end"]
    assert json.loads(frames[0]["data"])["data"]["task_id"] == later["id"]
    assert json.loads(frames[1]["data"])["reason"] == "timeout"
    # The stream's envelope writes its time as the JSON API does.
    listed = await client.get(f"{V1}/events", params={"after": seen}, headers=bearer(alice))
    assert json.loads(frames[0]["data"])["created_at"] == listed.json()["items"][0]["created_at"]
    bad = {**bearer(alice), "Last-Event-ID": "-3"}
    r = await client.get(f"{V1}/events", headers=bad)
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "Last-Event-ID"


async def test_a_new_long_poll_during_shutdown_is_told_to_retry(
    client: httpx.AsyncClient, container: Container
):
    alice = await sign_in(client, ALICE)
    container.draining = True
    r = await client.get(f"{V1}/events", params={"wait": 5}, headers=bearer(alice))
    assert r.status_code == 204 and r.headers["Retry-After"]


# -- the Standard Webhooks reference implementation


async def test_signatures_verify_with_the_standardwebhooks_package(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver
):
    standardwebhooks = pytest.importorskip(
        "standardwebhooks",
        reason="standardwebhooks is not installed (pip install standardwebhooks==1.1.0)",
    )
    alice = await sign_in(client, ALICE)
    rec = await receivers()
    hook = await subscribe(client, alice, rec, ["task.created"])
    task = await create_task(client, alice)
    await deliver_all(container)
    got = rec.events[0]
    payload = standardwebhooks.Webhook(hook["secret"]).verify(got.body, got.headers)
    assert payload["data"]["task_id"] == task["id"]

    r = await client.post(f"{V1}/webhooks/{hook['id']}/rotate-secret", headers=bearer(alice))
    rec.secrets = [r.json()["secret"]]
    await create_task(client, alice)
    await deliver_all(container)
    both = rec.events[1]
    for secret in (hook["secret"], r.json()["secret"]):
        standardwebhooks.Webhook(secret).verify(both.body, both.headers)
    stranger = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(stranger).verify(both.body, both.headers)
    uuid.UUID(both.headers["webhook-id"])


async def test_a_batch_of_events_is_stored_in_order_and_fans_out_like_single_events(
    client: httpx.AsyncClient, container: Container, receivers: MakeReceiver
):
    # An FL round's task rows emit their events in one batch (events.service.emit_many).
    alice, admin = [await sign_in(client, a) for a in (ALICE, ADMIN)]
    rec_alice, rec_admin = await receivers(), await receivers()
    await subscribe(client, alice, rec_alice, ["task.created"])
    await subscribe(client, admin, rec_admin, ["task.offered"])
    batch = [
        events_service.NewEvent("task.created", ALICE.address, {"n": 1}, "r1"),
        events_service.NewEvent("task.offered", ALICE.address, {"n": 2}, "r1"),
        events_service.NewEvent("task.created", BOB.address, {"n": 3}, "r2"),
        events_service.NewEvent("task.failed", BOB.address, {"n": 4}, "r2"),
    ]
    deps = container.tasks.events
    async with container.db.transaction() as s:
        await events_service.emit_many(s, deps, batch)
    async with container.db.read_session() as s:
        stored = (await s.scalars(select(Event).order_by(Event.seq))).all()
    assert [(e.type, e.data["n"]) for e in stored][-4:] == [
        ("task.created", 1),
        ("task.offered", 2),
        ("task.created", 3),
        ("task.failed", 4),
    ]
    assert stored[-1].owner_address == BOB.address.lower()
    await deliver_all(container)
    assert [(r.json["type"], r.json["data"]["n"]) for r in rec_alice.events] == [
        ("task.created", 1)
    ]
    assert [(r.json["type"], r.json["data"]["n"]) for r in rec_admin.events] == [
        ("task.offered", 2)
    ]
    # Nobody subscribed: the batch is stored without a delivery.
    async with container.db.transaction() as s:
        await events_service.emit_many(
            s, deps, [events_service.NewEvent("task.created", BOB.address, {"n": 5}, "r3")]
        )
    async with container.db.read_session() as s:
        total = await s.scalar(select(func.count()).select_from(WebhookDelivery))
    assert total == 2


async def test_streams_end_when_their_token_is_revoked(
    client: httpx.AsyncClient, container: Container, monkeypatch: pytest.MonkeyPatch
):
    # An event stream may last 30 minutes and a log stream follows a task to its end: both
    # kept delivering with an API key revoked after they opened.
    from parity.api import deps

    monkeypatch.setattr(deps, "STREAM_REAUTH_SECONDS", 0.0)
    alice = await sign_in(client, ALICE)
    made = await client.post(f"{V1}/auth/keys", json={"name": "s"}, headers=bearer(alice))
    key, key_id = made.json()["key"], made.json()["id"]
    task = await create_task(client, alice)
    events = asyncio.create_task(
        client.get(f"{V1}/events", headers={**bearer(key), "Accept": "text/event-stream"})
    )
    logs = asyncio.create_task(
        client.get(f"{V1}/tasks/{task['id']}/logs", params={"follow": "true"}, headers=bearer(key))
    )
    await until(lambda: container.event_hub.waiting == 1)
    r = await client.delete(f"{V1}/auth/keys/{key_id}", headers=bearer(alice))
    assert r.status_code == 200
    container.event_hub.wake_all()
    for stream in (events, logs):
        frames = _frames((await asyncio.wait_for(stream, timeout=10)).text)
        assert frames[-1]["event"] == "end"
        assert json.loads(frames[-1]["data"])["reason"] == "unauthenticated"


async def test_a_log_stream_says_why_it_ends(client: httpx.AsyncClient, container: Container):
    # It ended with {"status": "running"} alone when the server shut down: a client took that
    # for the task's end.
    alice = await sign_in(client, ALICE)
    task = await create_task(client, alice)
    logs = asyncio.create_task(
        client.get(
            f"{V1}/tasks/{task['id']}/logs", params={"follow": "true"}, headers=bearer(alice)
        )
    )
    await asyncio.sleep(0.2)
    container.draining = True
    frames = _frames((await asyncio.wait_for(logs, timeout=10)).text)
    end = json.loads(frames[-1]["data"])
    assert frames[-1]["event"] == "end" and end["reason"] == "shutdown"
    assert end["status"] == "pending"
