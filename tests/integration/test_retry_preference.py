"""A runner that failed a task is passed over while another runner could take it, and gets
it back when none can (exclusion is a preference): the quick start's one-runner network
retries a failed task and then ends it ``failed``."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import select

from parity.clock import FrozenClock
from parity.container import Container
from parity.tasks import service as tasks_service
from parity.tasks.models import Task
from tests.conftest import ALICE, sign_in
from tests.integration.queue_helpers import (
    act,
    attempts,
    claim,
    claimed,
    create_task,
    custom_client,
    device,
    get_task,
    heartbeat,
    register_runner,
)

BACKOFF_PAST = 10  # retry base is 5 s with ±10 % jitter


async def test_a_lone_runner_retries_the_task_it_failed_and_then_fails_it(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    runner, reg = await register_runner(client, alice, device())
    task = await create_task(client, alice, max_attempts=2)
    first = await claimed(client, runner)
    r = await act(client, runner, task["id"], "fail", first["claim_token"], error="exit 1")
    assert r.json()["status"] == "pending"
    assert (await claim(client, runner)).status_code == 204  # backing off
    clock.advance(BACKOFF_PAST)
    second = await claimed(client, runner)
    assert second["task"]["id"] == task["id"] and second["attempt"] == 2
    r = await act(client, runner, task["id"], "fail", second["claim_token"], error="exit 1")
    assert r.json()["status"] == "failed"
    tried = await attempts(client, alice, task["id"])
    assert [(a["attempt"], a["outcome"]) for a in tried] == [(1, "failed"), (2, "failed")]
    assert {a["runner_id"] for a in tried} == {reg["runner"]["id"]}


async def test_another_eligible_runner_is_preferred_over_the_one_that_failed(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    failed_on, _ = await register_runner(client, alice, device())
    other, _ = await register_runner(client, alice, device())
    task = await create_task(client, alice, max_attempts=3)
    c = await claimed(client, failed_on)
    await act(client, failed_on, task["id"], "fail", c["claim_token"], error="exit 1")
    clock.advance(BACKOFF_PAST)
    assert (await claim(client, failed_on)).status_code == 204  # the other runner could take it
    assert (await claimed(client, other))["task"]["id"] == task["id"]


async def test_the_failed_runner_gets_the_task_back_when_the_other_runner_stops(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    failed_on, _ = await register_runner(client, alice, device())
    other, _ = await register_runner(client, alice, device())
    task = await create_task(client, alice, max_attempts=3)
    c = await claimed(client, failed_on)
    await act(client, failed_on, task["id"], "fail", c["claim_token"], error="exit 1")
    clock.advance(BACKOFF_PAST)
    assert (await claim(client, failed_on)).status_code == 204
    assert (await heartbeat(client, other, status="offline")).status_code == 200
    again = await claimed(client, failed_on)
    assert again["task"]["id"] == task["id"] and again["attempt"] == 2


async def test_a_runner_too_small_for_the_task_does_not_hold_it_from_the_one_that_failed(
    client: httpx.AsyncClient, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    failed_on, _ = await register_runner(client, alice, device())
    await register_runner(client, alice, device(), cpu_cores=0.5)
    task = await create_task(client, alice, max_attempts=2, resources={"cpu_cores": 2})
    c = await claimed(client, failed_on)
    await act(client, failed_on, task["id"], "fail", c["claim_token"], error="exit 1")
    clock.advance(BACKOFF_PAST)
    assert (await claimed(client, failed_on))["attempt"] == 2
    assert (await get_task(client, alice, task["id"]))["status"] == "assigned"


async def test_a_lone_push_runner_is_offered_the_task_it_failed_again(
    container: Container, clock: FrozenClock
):
    async with custom_client(container, webhook_allow_private=True) as (http, c):
        alice = await sign_in(http, ALICE)
        runner, reg = await register_runner(
            http, alice, device(), webhook="http://127.0.0.1:9/parity"
        )
        task = await create_task(http, alice, max_attempts=2)
        got = await claimed(http, runner)
        await act(http, runner, task["id"], "fail", got["claim_token"], error="exit 1")
        clock.advance(BACKOFF_PAST)
        async with c.db.transaction() as s:
            assert await tasks_service.reoffer_pending(s, c.tasks, clock.now()) == 1
        offered = select(Task.target_runner_id).where(Task.id == uuid.UUID(task["id"]))
        async with c.db.read_session() as s:
            target = (await s.execute(offered)).scalar_one()
        assert str(target) == reg["runner"]["id"]


async def test_a_task_given_back_by_its_offered_runner_can_be_claimed_by_another(
    container: Container,
):
    async with custom_client(container, webhook_allow_private=True) as (http, _c):
        alice = await sign_in(http, ALICE)
        pushed, _ = await register_runner(
            http, alice, device(), webhook="http://127.0.0.1:9/parity"
        )
        task = await create_task(http, alice)
        got = await claimed(http, pushed)
        assert got["task"]["id"] == task["id"]
        r = await act(http, pushed, task["id"], "release", got["claim_token"])
        assert r.status_code == 200 and r.json()["status"] == "pending"
        puller, _ = await register_runner(http, alice, device())
        again = await claimed(http, puller)
        assert again["task"]["id"] == task["id"] and again["attempt"] == 2


async def test_a_draining_push_runner_is_not_offered_new_work(container: Container):
    async with custom_client(container, webhook_allow_private=True) as (http, c):
        alice = await sign_in(http, ALICE)
        _, reg = await register_runner(http, alice, device(), webhook="http://127.0.0.1:9/parity")
        pushed_id = reg["runner"]["id"]
        owner = {"Authorization": f"Bearer {alice}"}

        async def target_of(task: dict[str, Any]) -> str | None:
            q = select(Task.target_runner_id).where(Task.id == uuid.UUID(task["id"]))
            async with c.db.read_session() as s:
                found = (await s.execute(q)).scalar_one()
            return None if found is None else str(found)

        r = await http.post(f"/api/v1/runners/{pushed_id}/drain", headers=owner)
        assert r.status_code == 200, r.text
        held = await create_task(http, alice)
        assert await target_of(held) is None  # left for any runner: a pull-only one claims it
        puller, _ = await register_runner(http, alice, device())
        assert (await claimed(http, puller))["task"]["id"] == held["id"]
        r = await http.post(f"/api/v1/runners/{pushed_id}/resume", headers=owner)
        assert r.status_code == 200, r.text
        assert await target_of(await create_task(http, alice)) == pushed_id
