"""Retention prunes the log lines of tasks finished long ago, and only those."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from parity.clock import FrozenClock
from parity.container import Container
from parity.jobs.runner import JobRunner
from parity.retention import retention_job
from parity.tasks.models import TaskLog, TaskResult
from tests.conftest import ALICE, BOB, bearer, sign_in
from tests.integration.queue_helpers import claimed, create_task, device, register_runner

V1 = "/api/v1"


async def _log(client: httpx.AsyncClient, runner: str, got: dict[str, object]) -> None:
    task_id = got["task"]["id"]  # type: ignore[index]
    r = await client.post(
        f"{V1}/runners/tasks/{task_id}/logs",
        json={"claim_token": got["claim_token"], "seq": 1, "lines": ["hello"]},
        headers=bearer(runner),
    )
    assert r.status_code == 200, r.text


async def _logged_task_ids(container: Container) -> set[str]:
    async with container.db.read_session() as s:
        return {str(t) for t in (await s.scalars(select(TaskLog.task_id))).all()}


async def test_logs_of_long_finished_tasks_are_pruned_and_running_ones_kept(
    client: httpx.AsyncClient, container: Container, clock: FrozenClock
):
    alice = await sign_in(client, ALICE)
    runner, _ = await register_runner(
        client, await sign_in(client, BOB), device(), max_concurrent_tasks=2
    )
    done = await create_task(client, alice)
    running = await create_task(client, alice)
    first = await claimed(client, runner, start="true")
    second = await claimed(client, runner, start="true")
    await _log(client, runner, first)
    await _log(client, runner, second)
    finished = first if first["task"]["id"] == done["id"] else second
    r = await client.post(
        f"{V1}/runners/tasks/{done['id']}/complete",
        json={"claim_token": finished["claim_token"], "output": "ok", "exit_code": 0},
        headers=bearer(runner),
    )
    assert r.status_code == 200, r.text
    job = JobRunner(container.db, clock, [retention_job(60, task_log_retention_days=30)])
    await job.run_tick(job.jobs[0])
    assert await _logged_task_ids(container) == {done["id"], running["id"]}  # too recent
    clock.advance(31 * 86400)
    await job.run_tick(job.jobs[0])
    assert await _logged_task_ids(container) == {running["id"]}  # still running: kept
    async with container.db.read_session() as s:  # the result outlives the logs
        assert (await s.scalars(select(TaskResult.task_id))).all() != []
