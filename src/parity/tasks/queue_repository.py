"""The SQL of claimed tasks and of the queue's timers: the fence read, lease expiry, a runner's
active tasks, and offers (their expiry, the due untargeted tasks to offer again). Claim, start
and complete are in ``queue.statements``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import cast

from sqlalchemy import Table, and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import TaskStatus
from parity.tasks.models import Task, TaskAttempt
from parity.tasks.queue import statements as st
from parity.tasks.repository import ACTIVE_VALUES, MOVABLE_TYPES

_TASKS = cast(Table, Task.__table__)
_ATTEMPTS = cast(Table, TaskAttempt.__table__)


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


_DUE_AND_PUSH = select(st.DUE_UNOFFERED, st.PUSH_RUNNER)


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
