"""The SQL of claimed tasks and of the queue's timers: start and complete under the runner's
current claim (one conditional UPDATE each, built once like the claim's statements), the fence
read, closing an attempt, lease expiry, a runner's active tasks, and offers (their expiry, the
due untargeted tasks to offer again)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import TaskStatus
from parity.runners.models import Runner
from parity.tasks.models import Task, TaskAttempt
from parity.tasks.repository import ACTIVE_VALUES, MOVABLE_TYPES, TaskRow

_TASKS = cast(Table, Task.__table__)
_ATTEMPTS = cast(Table, TaskAttempt.__table__)


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
# The task is active under this claim token, held by this runner. The token's hash is on the
# task only from its claim until the attempt ends, so this is the fencing test.
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
