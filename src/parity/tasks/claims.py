"""The claim side of the queue in a SQLAlchemy unit of work: a claim (``queue.ops.claim``,
the same implementation as the PostgreSQL fast path) with the precise reason when a named task
cannot be claimed, and what a runner could claim now. The transitions of a claimed task are in
``lifecycle``."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parity.clock import utc_iso
from parity.core.tasks.states import TaskStatus
from parity.runners import service as runners_service
from parity.tasks import claim_repository as claim_repo
from parity.tasks import repository as repo
from parity.tasks.deps import TaskDeps
from parity.tasks.errors import RunnerNotEligible, TaskNotClaimable, TaskNotFound
from parity.tasks.models import Task
from parity.tasks.queue import ops
from parity.tasks.queue.executors import SessionExecutor, executor_for
from parity.tasks.queue.ops import Claim, Refusal


async def claim(
    session: AsyncSession,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    *,
    max_tasks: int = 1,
    start: bool = False,
    task_id: uuid.UUID | None = None,
) -> Claim | None:
    """Claim up to ``max_tasks`` pending tasks that fit this runner (or one named task, or
    raise why it cannot be claimed)."""
    x = await executor_for(session)
    got = await ops.claim(x, deps, runner_id, max_tasks=max_tasks, start=start, task_id=task_id)
    if isinstance(got, Claim):
        return got
    if got is Refusal.UNKNOWN_RUNNER:
        raise RunnerNotEligible("this runner is unknown or banned")
    if task_id is None:
        return None
    runner = await ops.lock_runner(SessionExecutor(session), runner_id)
    assert runner is not None
    if got is Refusal.NOT_CLAIMING:
        state = "draining" if runner.drain_requested else runner.status
        raise RunnerNotEligible(f"runner is {state}; only online runners claim")
    await _explain_unclaimable(session, runner, task_id, deps.clock.now())
    raise RunnerNotEligible("task cannot be claimed by this runner now")


async def _explain_unclaimable(
    session: AsyncSession, runner: ops.ClaimingRunner, task_id: uuid.UUID, now: datetime
) -> None:
    usage = await claim_repo.active_usage(session, runner.id)
    if usage.count >= runner.max_concurrent_tasks:
        raise RunnerNotEligible(
            "runner is at max_concurrent_tasks", details={"active_claims": usage.count}
        )
    task = await repo.get(session, task_id)
    if task is None:
        raise TaskNotFound(f"task {task_id} not found")
    details: dict[str, object] = {"status": task.status}
    if task.status != TaskStatus.PENDING:
        raise TaskNotClaimable(f"task is {task.status}", details=details)
    if task.available_at > now:
        details["available_at"] = utc_iso(task.available_at)
        raise TaskNotClaimable("task is not available yet", details=details)
    if task.target_runner_id not in (None, runner.id):
        details["target_runner_id"] = str(task.target_runner_id)
        if task.offer_expires_at is not None:
            details["offer_expires_at"] = utc_iso(task.offer_expires_at)
        raise TaskNotClaimable("task is offered to another runner", details=details)
    if runner.id in await repo.exclusions(session, task.id):
        raise RunnerNotEligible(
            "this runner already failed this task and another eligible runner is online",
            details=details,
        )
    raise RunnerNotEligible(
        "task does not fit this runner (resources, docker, labels or free capacity)",
        details={
            "required": {
                "cpu_cores": task.req_cpu_cores,
                "memory_mb": task.req_memory_mb,
                "gpus": task.req_gpus,
                "docker": task.req_docker,
                "labels": task.required_labels,
            }
        },
    )


async def available_for(
    session: AsyncSession, deps: TaskDeps, runner_id: uuid.UUID, limit: int
) -> list[Task]:
    """What this runner could claim now (read only, nothing locked on SQLite)."""
    runner = await runners_service.get(session, runner_id)
    if runner is None or runner.banned_at is not None:
        raise RunnerNotEligible("this runner is unknown or banned")
    usage = await claim_repo.active_usage(session, runner.id)
    return await claim_repo.claimable(
        session,
        runner.id,
        deps.clock.now(),
        free_cpu=runner.cpu_cores - usage.cpu_cores,
        free_memory=runner.memory_mb - usage.memory_mb,
        free_gpus=runner.gpus - usage.gpus,
        docker=runner.docker,
        labels=dict(runner.labels or {}),
        limit=limit,
        lock=False,
    )
