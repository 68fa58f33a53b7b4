"""Cross-replica wake-ups over PostgreSQL LISTEN/NOTIFY: a wake-up raised on one server wakes a
waiter on another; a server ignores its own notifications. A token revoked on one server is
dropped from the others' token caches the same way."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from parity.app import create_app
from parity.auth.cache import TokenCache
from parity.auth.schemas import Principal
from parity.clock import FrozenClock
from parity.container import Container
from parity.db.session import Database
from parity.events.hub import EventHub
from parity.relay import WakeRelay, asyncpg_dsn
from parity.tasks.wakeups import WakeHub
from tests.conftest import ALICE, BOB, bearer, make_settings, sign_in, until
from tests.contract.nats_service import nats_url
from tests.contract.redis_service import redis_url
from tests.integration.queue_helpers import create_task, device, register_runner

pytestmark = pytest.mark.postgres_only


@pytest.fixture
async def relays(database_url: str) -> AsyncIterator[tuple[WakeRelay, WakeRelay]]:
    dsn = asyncpg_dsn(database_url)
    a = WakeRelay(dsn, WakeHub(), EventHub(), origin="replica-a")
    b = WakeRelay(dsn, WakeHub(), EventHub(), origin="replica-b")
    await a.start()
    await b.start()
    assert a.connected and b.connected
    await _heard_each_other(a, b)
    yield a, b
    await a.stop()
    await b.stop()


async def test_a_runner_waiting_on_another_replica_is_woken(relays: tuple[WakeRelay, WakeRelay]):
    a, b = relays
    runner = uuid.uuid4()
    waiting = asyncio.create_task(b.wakeups.wait(runner, timeout=20))
    await until(lambda: b.wakeups.waiting == 1)
    assert a.wakeups.wake_runner(runner) == 0  # not waiting here: forwarded
    assert await waiting is True
    assert (b.received, a.received) == (1, 0)  # a ignores its own notification


async def test_wake_any_asks_other_replicas_only_for_the_waiters_it_lacks(
    relays: tuple[WakeRelay, WakeRelay],
):
    a, b = relays
    here = asyncio.create_task(a.wakeups.wait(uuid.uuid4(), timeout=20))
    there = asyncio.create_task(b.wakeups.wait(uuid.uuid4(), timeout=20))
    await until(lambda: a.wakeups.waiting == 1 and b.wakeups.waiting == 1)
    assert a.wakeups.wake_any(1) == 1  # satisfied locally: nothing forwarded
    assert await here is True
    assert a.wakeups.wake_any(1) == 0  # none left here: one asked of b
    assert await there is True
    assert b.received == 1


async def test_events_published_on_one_replica_wake_readers_on_another(
    relays: tuple[WakeRelay, WakeRelay],
):
    a, b = relays
    owner = "0x" + "ab" * 20
    mine = asyncio.create_task(b.events.wait(owner, timeout=20))
    other = asyncio.create_task(b.events.wait("0x" + "cd" * 20, timeout=1))
    await until(lambda: b.events.waiting == 2)
    a.events.publish([owner])  # deliveries queued (the default)
    assert await mine is True
    assert await other is False  # only the owner's readers (and operators') are woken
    assert b.events.delivery_event.is_set()


async def _heard_each_other(*relays: WakeRelay) -> None:
    """Every relay announced itself and heard the others (wake-ups go only to listeners)."""
    await until(lambda: all(r.peers >= len(relays) - 1 for r in relays))


async def test_a_lone_replica_sends_no_wake_ups_and_starts_once_another_listens(
    database_url: str,
):
    dsn = asyncpg_dsn(database_url)
    a = WakeRelay(dsn, WakeHub(), EventHub(), origin="replica-a")
    await a.start()
    b: WakeRelay | None = None
    try:
        for _ in range(20):
            a.wakeups.wake_any(1)  # nobody waits here, and no other replica listens
        # Dropped means never queued for sending (the only way a notification leaves).
        assert a.dropped == 20 and a.peers == 0

        b = WakeRelay(dsn, WakeHub(), EventHub(), origin="replica-b")
        await b.start()
        await _heard_each_other(a, b)  # b announced itself; a answered the newcomer
        runner = uuid.uuid4()
        waiting = asyncio.create_task(b.wakeups.wait(runner, 10))
        await until(lambda: b.wakeups.waiting == 1)
        a.wakeups.wake_runner(runner)
        assert await asyncio.wait_for(waiting, 5) is True
    finally:
        await a.stop()
        if b is not None:
            await b.stop()


async def test_a_replica_that_stops_is_forgotten_by_the_others_at_once(database_url: str):
    """A stopping replica says so: the others stop counting it (in /api/status's wakeup_peers
    and warnings) and stop sending it wake-ups now, not PEER_TTL_SECONDS (30 s) later."""
    dsn = asyncpg_dsn(database_url)
    a = WakeRelay(dsn, WakeHub(), EventHub(), origin="replica-a")
    b = WakeRelay(dsn, WakeHub(), EventHub(), origin="replica-b")
    await a.start()
    await b.start()
    try:
        await _heard_each_other(a, b)
        await b.stop()
        await until(lambda: a.peers == 0)
        a.wakeups.wake_any(1)  # a is alone again: nothing is sent
        assert a.dropped == 1
    finally:
        await a.stop()
        await b.stop()


async def test_a_token_cache_clear_reaches_another_replicas_cache(database_url: str):
    dsn = asyncpg_dsn(database_url)
    clock = FrozenClock()
    caches = [TokenCache(60, clock), TokenCache(60, clock)]
    a = WakeRelay(dsn, WakeHub(), EventHub(), origin="replica-a", tokens=caches[0])
    b = WakeRelay(dsn, WakeHub(), EventHub(), origin="replica-b", tokens=caches[1])
    await a.start()
    await b.start()
    try:
        await _heard_each_other(a, b)
        for cache in caches:
            p = Principal(
                address="0x" + "ab" * 20, kind="session", token_id=uuid.uuid4(), is_admin=False
            )
            assert cache.put("h", p, None, cache.generation, clock.now())
        caches[0].clear()  # a revocation committed on a
        await until(lambda: b.received >= 1)
        assert len(caches[1]) == 0 and caches[1].generation == 1
        assert caches[0].generation == 1  # a ignores its own notification
    finally:
        await a.stop()
        await b.stop()
    assert caches[0].forward is None  # stop detaches the cache


@contextlib.asynccontextmanager
async def _two_servers(
    database_url: str,
    tmp_path: Path,
    clock: FrozenClock,
    settings: tuple[dict[str, Any], dict[str, Any]] = ({}, {}),
) -> AsyncIterator[tuple[Container, httpx.AsyncClient, Container, httpx.AsyncClient]]:
    """Two servers on one database, each with its own relay: (a, its client, b, its client);
    ``settings`` adds settings of a and of b."""
    containers = []
    for name, extra in zip(("a", "b"), settings, strict=True):
        # A long re-check, so only a relayed wake-up can end the long-poll early.
        s = make_settings(database_url, tmp_path / name, LONG_POLL_RECHECK_SECONDS=60, **extra)
        containers.append(Container(settings=s, db=Database(s.resolved_database_url), clock=clock))
    one, two = containers
    app_a = create_app(one, run_migrations=False, start_jobs=False)
    app_b = create_app(two, run_migrations=False, start_jobs=False)
    try:
        async with (
            app_a.router.lifespan_context(app_a),
            app_b.router.lifespan_context(app_b),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app_a), base_url="http://parity.test"
            ) as http_a,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app_b), base_url="http://parity.test"
            ) as http_b,
        ):
            yield one, http_a, two, http_b
    finally:
        for c in containers:
            await c.db.dispose()


async def test_replicas_on_different_stream_buses_are_told_apart_from_one_shared_bus(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
):
    redis, nats = redis_url(), nats_url()

    async def stream_warnings(a: str, b: str, where: Path) -> list[str]:
        both = ({"STREAM_BUS_URL": a}, {"STREAM_BUS_URL": b})
        async with _two_servers(database_url, where, clock, both) as (_one, _ha, two, http_b):
            await until(lambda: two.relay is not None and two.relay.peer_setups() != [])
            status = (await http_b.get("/api/status")).json()
        return [w for w in status["warnings"] if "STREAM_BUS_URL" in w]

    # One on Redis, the other on NATS: tokens cannot cross, and the status says so.
    [mixed] = await stream_warnings(redis, nats, tmp_path / "mixed")
    assert mixed.startswith("another replica relays LLM token streams over a different")
    assert await stream_warnings(nats, nats, tmp_path / "same") == []


async def test_a_task_created_on_one_server_ends_a_long_poll_on_another(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
):
    async with _two_servers(database_url, tmp_path, clock) as (_one, http_a, two, http_b):
        status = (await http_b.get("/api/status")).json()
        assert status["backends"]["wakeups"] == "postgres-notify"
        # Each keeps files in its own local blockstore: content stored through one would not
        # be found through the other, and the status says so once they hear each other.
        assert two.relay is not None
        await until(lambda: two.relay is not None and two.relay.peers == 1)
        status = (await http_b.get("/api/status")).json()
        assert status["backends"]["content_store"] == "local"
        assert status["backends"]["streams"] == "in-process"
        # Neither a shared content store nor a shared stream bus: both are named.
        assert ["FILECOIN_IPFS_ENDPOINT" in w for w in status["warnings"]] == [True, False]
        assert "STREAM_BUS_URL" in status["warnings"][1]
        alice = await sign_in(http_a, ALICE)
        runner_token, _ = await register_runner(http_b, await sign_in(http_b, BOB), device())
        poll = asyncio.create_task(
            http_b.post(
                "/api/v1/runners/tasks/claim",
                params={"wait": 30},
                headers=bearer(runner_token),
                timeout=60,
            )
        )
        await until(lambda: two.wakeups.waiting == 1)  # the runner is waiting on server b
        task = await create_task(http_a, alice)
        # Woken by a's notification: answered well before its 30 s wait or 60 s re-check.
        r = await asyncio.wait_for(poll, timeout=20)
        assert r.status_code == 200, r.text
        assert r.json()["task"]["id"] == task["id"]
        assert two.relay is not None and two.relay.received >= 1


async def test_a_logout_on_one_server_is_refused_by_another_that_cached_the_token(
    container: Container, database_url: str, tmp_path: Path, clock: FrozenClock
):
    async with _two_servers(database_url, tmp_path, clock) as (_one, http_a, two, http_b):
        token = await sign_in(http_a, ALICE)
        assert (await http_b.get("/api/v1/auth/me", headers=bearer(token))).status_code == 200
        assert len(two.token_cache) == 1  # b remembers it (the clock stands still)
        r = await http_a.post("/api/v1/auth/logout", headers=bearer(token))
        assert r.status_code == 204
        assert two.relay is not None  # the clear travels over the relay
        await until(lambda cache=two.token_cache: len(cache) == 0)
        r = await http_b.get("/api/v1/auth/me", headers=bearer(token))
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
