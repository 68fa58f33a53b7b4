"""The background loop framework: ticks are transactions, skipped when another replica holds
the job's advisory lock, and retention prunes what may be pruned."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from parity.auth.models import AuthNonce, AuthToken
from parity.clock import FrozenClock
from parity.container import Container
from parity.jobs.runner import JobRunner, PeriodicJob, TickOutcome, job_key
from parity.retention import retention_job
from tests.conftest import ALICE, bearer, sign_in, until


async def _count(container: Container, model: type) -> int:
    async with container.db.read_session() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_retention_prunes_expired_nonces_and_old_tokens(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    token = await sign_in(client, ALICE)
    await client.post("/api/v1/auth/nonce", json={"address": ALICE.address})
    await client.post("/api/v1/auth/logout", headers=bearer(token))
    assert await _count(container, AuthNonce) == 2
    runner = JobRunner(container.db, clock, [retention_job(60)])
    res = await runner.run_tick(runner.jobs[0])
    assert res.outcome is TickOutcome.RAN and res.items == 0  # nothing old enough yet
    clock.advance(8 * 86400)
    res = await runner.run_tick(runner.jobs[0])
    assert res.items == 3  # two expired nonces, one long-revoked token
    assert await _count(container, AuthNonce) == 0
    assert await _count(container, AuthToken) == 0


async def test_a_failing_tick_rolls_back_and_the_loop_keeps_going(
    container: Container, clock: FrozenClock
):
    calls: list[int] = []

    async def flaky(session: AsyncSession, now: datetime) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return 1

    runner = JobRunner(container.db, clock, [PeriodicJob("flaky", 0.01, flaky)])
    runner.start()
    await until(lambda: runner.ticks["flaky"] >= 2)
    await runner.stop(timeout=2)
    assert len(calls) >= 3 and runner.ticks["flaky"] >= 2


async def test_stop_waits_for_the_tick_boundary(container: Container, clock: FrozenClock):
    started = asyncio.Event()
    finished: list[bool] = []

    async def slow(session: AsyncSession, now: datetime) -> int:
        started.set()
        await asyncio.sleep(0.2)  # the tick is busy when stop is asked for: the behaviour here
        finished.append(True)
        return 0

    runner = JobRunner(container.db, clock, [PeriodicJob("slow", 60, slow)])
    runner.start()
    await until(started.is_set)
    await runner.stop(timeout=5)
    assert finished == [True]


def test_job_keys_are_stable_and_distinct():
    assert job_key("retention") == job_key("retention")
    assert job_key("retention") != job_key("liveness")
    assert 0 <= job_key("x") < 2**31


@pytest.mark.postgres_only
async def test_tick_is_skipped_while_another_replica_holds_the_job_lock(
    container: Container, clock: FrozenClock
):
    ran: list[int] = []

    async def tick(session: AsyncSession, now: datetime) -> int:
        ran.append(1)
        return 1

    job = PeriodicJob("exclusive", 60, tick)
    runner = JobRunner(container.db, clock, [job])
    async with container.db.write_session() as other:
        held = await other.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": job.key})
        assert held
        res = await runner.run_tick(job)
        assert res.outcome is TickOutcome.SKIPPED
        await other.rollback()  # releases the transaction-scoped lock
    res = await runner.run_tick(job)
    assert res.outcome is TickOutcome.RAN and ran == [1]


@pytest.mark.postgres_only
async def test_concurrent_ticks_on_two_replicas_run_once(container: Container, clock: FrozenClock):
    ran: list[int] = []
    gate = asyncio.Event()

    async def tick(session: AsyncSession, now: datetime) -> int:
        ran.append(1)
        await gate.wait()
        return 1

    job = PeriodicJob("once", 60, tick)
    a = JobRunner(container.db, clock, [job])
    b = JobRunner(container.db, clock, [job])
    first = asyncio.create_task(a.run_tick(job))
    await until(lambda: ran == [1])  # a holds the job's lock, inside its tick
    second = await b.run_tick(job)
    gate.set()
    assert (await first).outcome is TickOutcome.RAN
    assert second.outcome is TickOutcome.SKIPPED
    assert ran == [1]


async def test_a_job_with_a_wake_event_ticks_when_woken_not_at_its_interval(
    container: Container, clock: FrozenClock
):
    ran: list[datetime] = []
    woken = asyncio.Event()

    async def tick(session: AsyncSession, now: datetime) -> int:
        ran.append(now)
        return 0

    runner = JobRunner(container.db, clock, [PeriodicJob("woken", 3600, tick, wake=woken)])
    runner.start()
    try:
        await until(lambda: len(ran) == 1)  # the first tick at start
        woken.set()
        await until(lambda: len(ran) == 2)  # long before the hour-long interval
    finally:
        await runner.stop()
