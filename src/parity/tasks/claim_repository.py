"""The claim's SQL: the runner row lock, the candidate tasks (with the runner's active usage),
marking the chosen ones claimed with their attempts, and the usage placement counts (active
claims plus outstanding offers)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Float,
    Integer,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import TaskStatus
from parity.runners.models import Runner
from parity.tasks.models import Task, TaskAttempt, TaskExclusion
from parity.tasks.repository import ACTIVE_VALUES, MOVABLE_TYPES, TaskRow

_TASKS = cast(Table, Task.__table__)
_ATTEMPTS = cast(Table, TaskAttempt.__table__)


@dataclass(frozen=True)
class Usage:
    count: int
    cpu_cores: float
    memory_mb: int
    gpus: int


@dataclass(frozen=True)
class ClaimingRunner:
    """What a claim needs of the runner row (read with the row lock, no ORM object)."""

    id: uuid.UUID
    status: str
    drain_requested: bool
    banned_at: datetime | None
    max_concurrent_tasks: int
    cpu_cores: float
    memory_mb: int
    gpus: int
    docker: bool
    labels: dict[str, Any] | None

    def candidate_limits(self, max_tasks: int) -> dict[str, Any]:
        """What the candidate query filters on for this runner (its capacity and slots), and
        how many rows to read: the batch plus a margin for rows placement turns down."""
        return {
            "cpu_cores": self.cpu_cores,
            "memory_mb": self.memory_mb,
            "gpus": self.gpus,
            "max_concurrent_tasks": self.max_concurrent_tasks,
            "docker": self.docker,
            "limit": min(max_tasks, self.max_concurrent_tasks) + 8,
        }


_LOCK_RUNNER = (
    select(
        Runner.id,
        Runner.status,
        Runner.drain_requested,
        Runner.banned_at,
        Runner.max_concurrent_tasks,
        Runner.cpu_cores,
        Runner.memory_mb,
        Runner.gpus,
        Runner.docker,
        Runner.labels,
    )
    .where(Runner.id == bindparam("runner_id"))
    .with_for_update()
)


async def lock_runner(session: AsyncSession, runner_id: uuid.UUID) -> ClaimingRunner | None:
    """Lock the runner row (serializes this runner's claims: no overcommit)."""
    row = (await session.execute(_LOCK_RUNNER, {"runner_id": runner_id})).first()
    return None if row is None else ClaimingRunner(*row)


def _usage_sums() -> tuple[Any, Any, Any, Any]:
    """count, cpu, memory and GPUs summed over the selected tasks' requirements."""
    return (
        func.count(),
        func.coalesce(func.sum(Task.req_cpu_cores), 0.0),
        func.coalesce(func.sum(Task.req_memory_mb), 0),
        func.coalesce(func.sum(Task.req_gpus), 0),
    )


async def active_usage(session: AsyncSession, runner_id: uuid.UUID) -> Usage:
    q = select(*_usage_sums()).where(Task.runner_id == runner_id, Task.status.in_(ACTIVE_VALUES))
    row = (await session.execute(q)).one()
    return Usage(int(row[0]), float(row[1]), int(row[2]), int(row[3]))


async def claimable(
    session: AsyncSession,
    runner_id: uuid.UUID,
    now: datetime,
    *,
    free_cpu: float,
    free_memory: int,
    free_gpus: int,
    docker: bool,
    limit: int,
    task_id: uuid.UUID | None = None,
    lock: bool = True,
) -> list[Task]:
    """Pending tasks this runner may take, best first, locked with SKIP LOCKED so concurrent
    claimers on PostgreSQL never wait on each other's rows."""
    q = _claimable_query(
        select(Task), runner_id, now, free_cpu, free_memory, free_gpus, docker, limit, task_id
    )
    if lock:
        q = q.with_for_update(skip_locked=True)
    return list((await session.scalars(q)).all())


async def claim_candidates(
    session: AsyncSession,
    runner_id: uuid.UUID,
    now: datetime,
    *,
    cpu_cores: float,
    memory_mb: int,
    gpus: int,
    max_concurrent_tasks: int,
    docker: bool,
    limit: int,
    task_id: uuid.UUID | None = None,
) -> list[Any]:
    """Like ``claimable`` but only the columns placement needs (no ORM objects to build on
    the hot path), locked with FOR UPDATE OF tasks SKIP LOCKED. The runner's active usage is
    computed in the same statement (a CTE) and carried on every row as ``used_count``,
    ``used_cpu``, ``used_memory``, ``used_gpus``; the filters use capacity - usage. Call it
    after locking the runner row: on PostgreSQL a new statement sees every claim that committed
    before the lock was granted."""
    stmt = _CANDIDATES.get((docker, task_id is not None))
    if stmt is None:
        stmt = _CANDIDATES[(docker, task_id is not None)] = _candidates(docker, task_id is not None)
    params = {
        "b_runner_id": runner_id,
        "b_now": now,
        "b_cpu": cpu_cores,
        "b_memory": memory_mb,
        "b_gpus": gpus,
        "b_max": max_concurrent_tasks,
        "b_limit": limit,
        "b_task_id": task_id,
    }
    return list((await session.execute(stmt, params)).all())


def _candidates(docker: bool, by_id: bool) -> Any:
    runner_id = bindparam("b_runner_id", type_=Task.__table__.c.runner_id.type)
    count, cpu, memory, gpus = _usage_sums()
    usage = (
        select(
            count.label("used_count"),
            cpu.label("used_cpu"),
            memory.label("used_memory"),
            gpus.label("used_gpus"),
        )
        .where(Task.runner_id == runner_id, Task.status.in_(ACTIVE_VALUES))
        .cte("runner_usage")
    )
    cols = select(
        Task.id,
        Task.req_cpu_cores,
        Task.req_memory_mb,
        Task.req_gpus,
        Task.req_docker,
        Task.required_labels,
        usage.c.used_count,
        usage.c.used_cpu,
        usage.c.used_memory,
        usage.c.used_gpus,
    ).where(usage.c.used_count < bindparam("b_max", type_=Integer))
    return _claimable_query(
        cols,
        runner_id,
        bindparam("b_now", type_=Task.__table__.c.available_at.type),
        bindparam("b_cpu", type_=Float) - usage.c.used_cpu,
        bindparam("b_memory", type_=Integer) - usage.c.used_memory,
        bindparam("b_gpus", type_=Integer) - usage.c.used_gpus,
        docker,
        bindparam("b_limit", type_=Integer),
        bindparam("b_task_id", type_=Task.__table__.c.id.type) if by_id else None,
    ).with_for_update(skip_locked=True, of=Task)


# (docker, by task id) → the candidates statement, built on first use.
_CANDIDATES: dict[tuple[bool, bool], Any] = {}


def _claimable_query(
    q: Any,
    runner_id: Any,
    now: Any,
    free_cpu: Any,
    free_memory: Any,
    free_gpus: Any,
    docker: bool,
    limit: Any,
    task_id: Any,
) -> Any:
    targeted_ok = or_(
        Task.target_runner_id.is_(None),
        Task.target_runner_id == runner_id,
        and_(Task.offer_expires_at < now, Task.type.in_(MOVABLE_TYPES)),
    )
    excluded = exists().where(
        TaskExclusion.task_id == Task.id, TaskExclusion.runner_id == runner_id
    )
    q = q.where(
        Task.status == TaskStatus.PENDING.value,
        Task.available_at <= now,
        targeted_ok,
        Task.req_cpu_cores <= free_cpu + 1e-9,
        Task.req_memory_mb <= free_memory,
        Task.req_gpus <= free_gpus,
        ~excluded,
    )
    if not docker:
        q = q.where(Task.req_docker.is_(False))
    if task_id is not None:
        q = q.where(Task.id == task_id)
    return q.order_by(Task.priority.desc(), Task.available_at, Task.id).limit(limit)


def _mark_claimed(start: bool) -> Any:
    values: dict[str, Any] = {
        "status": (TaskStatus.RUNNING if start else TaskStatus.ASSIGNED).value,
        "runner_id": bindparam("b_runner_id"),
        "attempts": _TASKS.c.attempts + 1,
        "claim_token_hash": bindparam("b_token_hash"),
        "lease_expires_at": bindparam("b_lease_until"),
        "updated_at": bindparam("b_now"),
        "offer_expires_at": None,
    }
    if start:
        values["started_at"] = bindparam("b_now")
    return (
        update(_TASKS)
        .where(
            _TASKS.c.id.in_(bindparam("b_ids", expanding=True)),
            _TASKS.c.status == TaskStatus.PENDING.value,
        )
        .values(**values)
        .returning(*_TASKS.c)
    )


# Hot-path statements are built once: building and cache-keying a statement per call costs
# about as much CPU as executing it.
_MARK_CLAIMED = _mark_claimed(start=False)
_MARK_CLAIMED_STARTED = _mark_claimed(start=True)
_INSERT_ATTEMPT = insert(_ATTEMPTS)


async def mark_claimed(
    session: AsyncSession,
    ids: Sequence[uuid.UUID],
    runner_id: uuid.UUID,
    token_hash: str,
    now: datetime,
    lease_until: datetime,
    start: bool,
) -> list[TaskRow]:
    """One conditional UPDATE … RETURNING for the whole batch, then the attempts in one
    (Core) INSERT."""
    params = {
        "b_ids": list(ids),
        "b_runner_id": runner_id,
        "b_token_hash": token_hash,
        "b_lease_until": lease_until,
        "b_now": now,
    }
    stmt = _MARK_CLAIMED_STARTED if start else _MARK_CLAIMED
    rows = list((await session.execute(stmt, params)).all())
    if rows:
        attempts = [
            {
                "id": uuid.uuid4(),
                "task_id": t.id,
                "attempt": t.attempts,
                "runner_id": runner_id,
                "claim_token_hash": token_hash,
                "claimed_at": now,
                "started_at": now if start else None,
            }
            for t in rows
        ]
        await session.execute(_INSERT_ATTEMPT, attempts[0] if len(attempts) == 1 else attempts)
    return rows


async def committed_usages(
    session: AsyncSession, runner_ids: Sequence[uuid.UUID], now: datetime
) -> dict[uuid.UUID, Usage]:
    """Per runner: its active claims plus the pending tasks offered to it (offer not expired),
    counted and with their summed requirements, so placement never offers beyond what a claim
    would accept."""
    if not runner_ids:
        return {}
    sums = _usage_sums()
    active = (
        select(Task.runner_id, *sums)
        .where(Task.runner_id.in_(runner_ids), Task.status.in_(ACTIVE_VALUES))
        .group_by(Task.runner_id)
    )
    offered = (
        select(Task.target_runner_id, *sums)
        .where(
            Task.target_runner_id.in_(runner_ids),
            Task.status == TaskStatus.PENDING.value,
            Task.offer_expires_at > now,
        )
        .group_by(Task.target_runner_id)
    )
    out: dict[uuid.UUID, Usage] = {}
    for q in (active, offered):
        for rid, n, cpu, mem, gpus in (await session.execute(q)).all():
            if rid is None:
                continue
            u = out.get(rid, Usage(0, 0.0, 0, 0))
            out[rid] = Usage(
                u.count + int(n),
                u.cpu_cores + float(cpu),
                u.memory_mb + int(mem),
                u.gpus + int(gpus),
            )
    return out
