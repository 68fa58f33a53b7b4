"""The claim side of the queue: claim pending tasks that fit a runner (or one named task, with
the precise reason when it cannot be claimed), placement over the locked candidates, the claim
token, and what a runner could claim now. The transitions of a claimed task are in
``lifecycle``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.identity.siwe import hash_token
from parity.core.tasks.placement import Resources, fits
from parity.core.tasks.states import TaskStatus
from parity.runners import repository as runners_repo
from parity.tasks import claim_repository as claim_repo
from parity.tasks import repository as repo
from parity.tasks.deps import TaskDeps
from parity.tasks.errors import RunnerNotEligible, TaskNotClaimable, TaskNotFound
from parity.tasks.models import Task

CLAIM_PREFIX = "ps_claim_"


@dataclass(frozen=True)
class Claim:
    tasks: Sequence[Any]  # tasks rows: Core rows, or pg_queue.RecordView on the driver path
    token: str
    lease_seconds: float
    lease_expires_at: datetime


def new_claim_token(deps: TaskDeps) -> str:
    return CLAIM_PREFIX + deps.random_bytes(32).hex()


def _labels_match(required: dict[str, object], labels: dict[str, object]) -> bool:
    return all(labels.get(k) == v for k, v in required.items())


async def _eligible_runner(
    session: AsyncSession, runner_id: uuid.UUID
) -> claim_repo.ClaimingRunner:
    # Locking the runner row serializes this runner's claims: no overcommit.
    runner = await claim_repo.lock_runner(session, runner_id)
    if runner is None or runner.banned_at is not None:
        raise RunnerNotEligible("this runner is unknown or banned")
    return runner


async def claim(
    session: AsyncSession,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    *,
    max_tasks: int = 1,
    start: bool = False,
    task_id: uuid.UUID | None = None,
) -> Claim | None:
    """Claim up to ``max_tasks`` pending tasks that fit this runner (or one named task)."""
    now = deps.clock.now()
    runner = await _eligible_runner(session, runner_id)
    if runner.status != "online" or runner.drain_requested:
        if task_id is not None:
            state = "draining" if runner.drain_requested else runner.status
            raise RunnerNotEligible(f"runner is {state}; only online runners claim")
        return None
    # The runner's active usage comes with the candidates (one statement, after the lock).
    candidates = await claim_repo.claim_candidates(
        session, runner.id, now, task_id=task_id, **runner.candidate_limits(max_tasks)
    )
    if not candidates:
        if task_id is not None:
            await _explain_unclaimable(session, runner, task_id, now)
        return None
    chosen = choose(runner, candidates, max_tasks)
    if not chosen:
        if task_id is not None:
            await _explain_unclaimable(session, runner, task_id, now)
        return None
    token = new_claim_token(deps)
    lease_until = now + timedelta(seconds=deps.lease_seconds)
    rows = await claim_repo.mark_claimed(
        session, chosen, runner.id, hash_token(token), now, lease_until, start
    )
    if not rows:
        return None
    return Claim(rows, token, deps.lease_seconds, lease_until)


def choose(
    runner: claim_repo.ClaimingRunner, candidates: Sequence[Any], max_tasks: int
) -> list[uuid.UUID]:
    """Placement over the locked candidates, in their order: each must fit what the runner has
    left after its active claims and the tasks chosen before it, and carry only labels the
    runner has. Candidates carry the runner's usage (``used_*``) and requirements (``req_*``)."""
    first = candidates[0]
    capacity = Resources(runner.cpu_cores, runner.memory_mb, runner.gpus, runner.docker)
    in_use = Resources(first.used_cpu, first.used_memory, first.used_gpus, False)
    want = min(max_tasks, runner.max_concurrent_tasks - first.used_count)
    chosen: list[uuid.UUID] = []
    for t in candidates:
        need = Resources(t.req_cpu_cores, t.req_memory_mb, t.req_gpus, t.req_docker)
        if not fits(need, capacity, in_use) or not _labels_match(
            t.required_labels or {}, runner.labels or {}
        ):
            continue
        in_use = Resources(
            in_use.cpu_cores + need.cpu_cores,
            in_use.memory_mb + need.memory_mb,
            in_use.gpus + need.gpus,
            False,
        )
        chosen.append(t.id)
        if len(chosen) >= want:
            break
    return chosen


async def _explain_unclaimable(
    session: AsyncSession, runner: claim_repo.ClaimingRunner, task_id: uuid.UUID, now: datetime
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
        details["available_at"] = task.available_at.isoformat()
        raise TaskNotClaimable("task is not available yet", details=details)
    if task.target_runner_id not in (None, runner.id):
        details["target_runner_id"] = str(task.target_runner_id)
        if task.offer_expires_at is not None:
            details["offer_expires_at"] = task.offer_expires_at.isoformat()
        raise TaskNotClaimable("task is offered to another runner", details=details)
    if runner.id in await repo.exclusions(session, task.id):
        raise RunnerNotEligible("this runner already failed this task", details=details)
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
    runner = await runners_repo.get(session, runner_id)
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
        limit=limit,
        lock=False,
    )
