"""All SQL of the task queue."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Float,
    Integer,
    Row,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from parity.api.pagination import Cursor, older_than
from parity.core.tasks.states import ACTIVE, TERMINAL, TaskStatus, TaskType
from parity.runners.models import Runner
from parity.tasks.models import Task, TaskAttempt, TaskExclusion, TaskLog, TaskResult

ACTIVE_VALUES = [s.value for s in ACTIVE]
_TASKS = cast(Table, Task.__table__)
_ATTEMPTS = cast(Table, TaskAttempt.__table__)
# A tasks row as Core returns it: the same attribute names as a Task.
TaskRow = Row[Any]
_RESULTS = cast(Table, TaskResult.__table__)
MOVABLE_TYPES = [TaskType.COMMAND.value, TaskType.DOCKER.value]


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


async def add(session: AsyncSession, task: Task) -> None:
    session.add(task)
    await session.flush()


async def get(session: AsyncSession, task_id: uuid.UUID, *, lock: bool = False) -> Task | None:
    q = select(Task).where(Task.id == task_id)
    if lock:
        q = q.with_for_update()
    return (await session.scalars(q)).first()


async def count_pending(session: AsyncSession, creator: str | None) -> int:
    q = select(func.count()).select_from(Task).where(Task.status == TaskStatus.PENDING.value)
    if creator is not None:
        q = q.where(Task.creator_address == creator)
    return int(await session.scalar(q) or 0)


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


async def active_counts(
    session: AsyncSession, runner_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    if not runner_ids:
        return {}
    rows = await session.execute(
        select(Task.runner_id, func.count())
        .where(Task.runner_id.in_(runner_ids), Task.status.in_(ACTIVE_VALUES))
        .group_by(Task.runner_id)
    )
    return {rid: int(n) for rid, n in rows.all() if rid is not None}


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


# The task is active under this claim token, held by this runner. The token's hash is on the
# task only from its claim until the attempt ends, so this is the fencing test.
# Is an untargeted task due (to offer), is a push-capable runner online (to offer it to)?
_DUE_UNOFFERED = (
    select(Task.id)
    .where(
        Task.status == TaskStatus.PENDING.value,
        Task.target_runner_id.is_(None),
        Task.available_at <= bindparam("b_now", type_=Task.__table__.c.available_at.type),
        Task.type.in_(MOVABLE_TYPES),
    )
    .limit(1)
    .exists()
)
_PUSH_RUNNER = (
    select(Runner.id)
    .where(
        Runner.status == "online",
        Runner.banned_at.is_(None),
        Runner.webhook_url.is_not(None),
        Runner.webhook_secret.is_not(None),
    )
    .limit(1)
    .exists()
)
_HELD_BY = (
    Task.id == bindparam("b_task_id"),
    Task.claim_token_hash == bindparam("b_token_hash"),
    Task.runner_id == bindparam("b_runner_id"),
    Task.status.in_(ACTIVE_VALUES),
)
_NOW = bindparam("b_now", type_=Task.__table__.c.updated_at.type)

# Core (not ORM-enabled) on the table: the answer is a plain row, not a tracked object.
_START_HELD = (
    update(_TASKS)
    .where(
        _TASKS.c.id == bindparam("b_task_id"),
        _TASKS.c.claim_token_hash == bindparam("b_token_hash"),
        _TASKS.c.runner_id == bindparam("b_runner_id"),
        _TASKS.c.status == TaskStatus.ASSIGNED.value,
    )
    .values(status=TaskStatus.RUNNING.value, started_at=_NOW, updated_at=_NOW)
    .returning(*_TASKS.c)
)
_START_ATTEMPT = (
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.task_id == bindparam("b_task_id"), _ATTEMPTS.c.attempt == bindparam("b_n"))
    .values(started_at=_NOW)
)
_COMPLETE_HELD = (
    update(Task)
    .where(*_HELD_BY)
    .values(
        status=TaskStatus.COMPLETED.value,
        started_at=func.coalesce(Task.started_at, _NOW),
        completed_at=_NOW,
        updated_at=_NOW,
        lease_expires_at=None,
        claim_token_hash=None,
    )
    # The re-offer test rides along: a completion frees a slot (see due_unoffered_and_push).
    .returning(Task, _DUE_UNOFFERED, _PUSH_RUNNER)
    .execution_options(synchronize_session=False, populate_existing=True)
)
_END_ATTEMPT = (
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.task_id == bindparam("b_task_id"), _ATTEMPTS.c.attempt == bindparam("b_n"))
    .values(
        started_at=func.coalesce(
            _ATTEMPTS.c.started_at, bindparam("b_started", type_=_ATTEMPTS.c.started_at.type)
        ),
        ended_at=bindparam("b_ended"),
        outcome=bindparam("b_outcome"),
        exit_code=bindparam("b_exit_code"),
    )
)
_INSERT_RESULT = insert(_RESULTS)


def _held_params(
    task_id: uuid.UUID, runner_id: uuid.UUID, token_hash: str, now: datetime
) -> dict[str, Any]:
    return {
        "b_task_id": task_id,
        "b_token_hash": token_hash,
        "b_runner_id": runner_id,
        "b_now": now,
    }


async def start_held(
    session: AsyncSession, task_id: uuid.UUID, runner_id: uuid.UUID, token_hash: str, now: datetime
) -> TaskRow | None:
    """``start`` in its common case: an assigned task under this runner's current claim turns
    running in one conditional UPDATE … RETURNING (the row lock is taken by the UPDATE). None
    when the condition does not hold; the caller then fences the slow way."""
    params = _held_params(task_id, runner_id, token_hash, now)
    task = (await session.execute(_START_HELD, params)).first()
    if task is not None:
        await session.execute(
            _START_ATTEMPT, {"b_task_id": task_id, "b_n": task.attempts, "b_now": now}
        )
    return task


async def complete_held(
    session: AsyncSession, task_id: uuid.UUID, runner_id: uuid.UUID, token_hash: str, now: datetime
) -> tuple[Task, bool, bool] | None:
    """``complete`` in its common case: the task under this runner's current claim turns
    completed in one conditional UPDATE … RETURNING (``started_at`` kept, else now). None when
    the condition does not hold; the caller then fences the slow way. With the task come the
    two answers of ``due_unoffered_and_push``."""
    params = _held_params(task_id, runner_id, token_hash, now)
    row = (await session.execute(_COMPLETE_HELD, params)).first()
    return None if row is None else (row[0], bool(row[1]), bool(row[2]))


async def end_attempt(
    session: AsyncSession,
    task_id: uuid.UUID,
    attempt: int,
    *,
    started: datetime,
    ended: datetime,
    outcome: str,
    exit_code: int | None,
) -> None:
    """Close an attempt (Core UPDATE; keeps an earlier ``started_at``)."""
    await session.execute(
        _END_ATTEMPT,
        {
            "b_task_id": task_id,
            "b_n": attempt,
            "b_started": started,
            "b_ended": ended,
            "b_outcome": outcome,
            "b_exit_code": exit_code,
        },
    )


async def fence_rows(
    session: AsyncSession, task_id: uuid.UUID, token_hash: str
) -> tuple[Task, TaskAttempt | None] | None:
    """The task, locked, and the attempt this claim token belongs to, in one statement (the
    lock covers the task row only). None when the task does not exist."""
    q = (
        select(Task, TaskAttempt)
        .outerjoin(
            TaskAttempt,
            and_(TaskAttempt.task_id == Task.id, TaskAttempt.claim_token_hash == token_hash),
        )
        .where(Task.id == task_id)
        .with_for_update(of=Task)
    )
    row = (await session.execute(q)).first()
    return None if row is None else (row[0], row[1])


async def attempt_by_token(
    session: AsyncSession, task_id: uuid.UUID, token_hash: str
) -> TaskAttempt | None:
    """Read afresh (a new statement sees what committed since the last one)."""
    q = (
        select(TaskAttempt)
        .where(TaskAttempt.task_id == task_id, TaskAttempt.claim_token_hash == token_hash)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(q)).first()


async def current_attempt(session: AsyncSession, task: Task) -> TaskAttempt | None:
    q = select(TaskAttempt).where(
        TaskAttempt.task_id == task.id, TaskAttempt.attempt == task.attempts
    )
    return (await session.scalars(q)).first()


async def add_exclusion(session: AsyncSession, task_id: uuid.UUID, runner_id: uuid.UUID) -> None:
    found = await session.get(TaskExclusion, (task_id, runner_id))
    if found is None:
        session.add(TaskExclusion(task_id=task_id, runner_id=runner_id))
        await session.flush()


async def exclusions(session: AsyncSession, task_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await session.scalars(
        select(TaskExclusion.runner_id).where(TaskExclusion.task_id == task_id)
    )
    return list(rows.all())


async def insert_result(session: AsyncSession, values: dict[str, Any]) -> None:
    """The accepted result as one Core INSERT (no ORM object to track)."""
    await session.execute(_INSERT_RESULT, values)


async def get_result(session: AsyncSession, task_id: uuid.UUID) -> TaskResult | None:
    return (await session.scalars(select(TaskResult).where(TaskResult.task_id == task_id))).first()


async def list_attempts(session: AsyncSession, task_id: uuid.UUID) -> list[TaskAttempt]:
    q = select(TaskAttempt).where(TaskAttempt.task_id == task_id).order_by(TaskAttempt.attempt)
    return list((await session.scalars(q)).all())


async def find_log(
    session: AsyncSession, task_id: uuid.UUID, attempt: int, seq: int
) -> TaskLog | None:
    q = select(TaskLog).where(
        TaskLog.task_id == task_id, TaskLog.attempt == attempt, TaskLog.seq == seq
    )
    return (await session.scalars(q)).first()


async def add_log(session: AsyncSession, log: TaskLog) -> None:
    session.add(log)
    await session.flush()


async def read_logs(
    session: AsyncSession, task_id: uuid.UUID, attempt: int | None, after: int | None, limit: int
) -> list[TaskLog]:
    """Ordered by (attempt, seq); ``after`` is a position cursor ``attempt * 10^8 + seq``."""
    q = select(TaskLog).where(TaskLog.task_id == task_id)
    if attempt is not None:
        q = q.where(TaskLog.attempt == attempt)
    if after is not None:
        a, s = divmod(after, 10**8)
        q = q.where(or_(TaskLog.attempt > a, and_(TaskLog.attempt == a, TaskLog.seq > s)))
    q = q.order_by(TaskLog.attempt, TaskLog.seq).limit(limit)
    return list((await session.scalars(q)).all())


async def list_tasks(
    session: AsyncSession,
    *,
    creator: str | None,
    statuses: Sequence[str] | None,
    types: Sequence[str] | None,
    limit: int,
    offset: int | None = None,
    after: Cursor | None = None,
) -> tuple[list[Task], int]:
    conds: list[Any] = []
    if creator is not None:
        conds.append(Task.creator_address == creator)
    if statuses:
        conds.append(Task.status.in_(statuses))
    if types:
        conds.append(Task.type.in_(types))
    total = int(await session.scalar(select(func.count()).select_from(Task).where(*conds)) or 0)
    q = select(Task).where(*conds)
    if after is not None:
        q = q.where(older_than(Task.created_at, Task.id, after))
    q = q.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit)
    if offset:
        q = q.offset(offset)
    return list((await session.scalars(q)).all()), total


async def expired_leases(session: AsyncSession, now: datetime, limit: int) -> list[Task]:
    q = (
        select(Task)
        .where(Task.status.in_(ACTIVE_VALUES), Task.lease_expires_at <= now)
        .order_by(Task.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.scalars(q)).all())


async def expire_runner_leases(session: AsyncSession, runner_id: uuid.UUID, now: datetime) -> int:
    res = await session.execute(
        update(Task)
        .where(Task.runner_id == runner_id, Task.status.in_(ACTIVE_VALUES))
        .values(lease_expires_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(res, "rowcount", 0))


async def runner_active_tasks(
    session: AsyncSession, runner_id: uuid.UUID, *, lock: bool = False
) -> list[Task]:
    q = select(Task).where(Task.runner_id == runner_id, Task.status.in_(ACTIVE_VALUES))
    if lock:
        q = q.with_for_update()
    return list((await session.scalars(q)).all())


async def expire_offers(session: AsyncSession, now: datetime) -> int:
    res = await session.execute(
        update(Task)
        .where(
            Task.status == TaskStatus.PENDING.value,
            Task.target_runner_id.is_not(None),
            Task.offer_expires_at < now,
            Task.type.in_(MOVABLE_TYPES),
        )
        .values(target_runner_id=None, offer_expires_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(res, "rowcount", 0))


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(select(Task.status, func.count()).group_by(Task.status))
    return {s: int(n) for s, n in rows.all()}


async def due_unoffered_and_push(session: AsyncSession, now: datetime) -> tuple[bool, bool]:
    """(is some untargeted task due, is some push-capable runner online) in one statement,
    nothing locked: the cheap test before the full re-offer."""
    row = (await session.execute(_DUE_AND_PUSH, {"b_now": now})).one()
    return bool(row[0]), bool(row[1])


_DUE_AND_PUSH = select(_DUE_UNOFFERED, _PUSH_RUNNER)


async def unoffered_due(session: AsyncSession, now: datetime, limit: int) -> list[Task]:
    q = (
        select(Task)
        .where(
            Task.status == TaskStatus.PENDING.value,
            Task.target_runner_id.is_(None),
            Task.available_at <= now,
            Task.type.in_(MOVABLE_TYPES),
        )
        .order_by(Task.priority.desc(), Task.available_at, Task.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.scalars(q)).all())


async def delete_logs_of_tasks_finished_before(session: AsyncSession, before: datetime) -> int:
    """Drop the log chunks of tasks that ended (completed, failed, cancelled) before ``before``."""
    finished = select(Task.id).where(
        Task.status.in_([s.value for s in TERMINAL]), Task.completed_at < before
    )
    result = await session.execute(delete(TaskLog).where(TaskLog.task_id.in_(finished)))
    return int(getattr(result, "rowcount", 0) or 0)


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
