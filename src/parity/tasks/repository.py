"""The task rows' SQL: tasks (add, get, list, count), attempts, results, logs, exclusions and the
retention deletes, plus the names the queue's statements share. The claim's statements are in
``claim_repository``; those on claimed tasks, leases and offers in ``queue_repository``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, and_, delete, exists, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from parity.core.tasks.states import ACTIVE, TERMINAL, TaskStatus, TaskType
from parity.db.pagination import Cursor, older_than
from parity.tasks.models import Task, TaskAttempt, TaskExclusion, TaskLog, TaskResult
from parity.tasks.queue import statements as st

ACTIVE_VALUES = [s.value for s in ACTIVE]
# A tasks row as Core returns it: the same attribute names as a Task.
TaskRow = Row[Any]
_RESULTS = cast(Table, TaskResult.__table__)
MOVABLE_TYPES = [TaskType.COMMAND.value, TaskType.DOCKER.value]


async def add(session: AsyncSession, task: Task) -> None:
    session.add(task)
    await session.flush()


async def get(session: AsyncSession, task_id: uuid.UUID, *, lock: bool = False) -> Task | None:
    q = select(Task).where(Task.id == task_id)
    if lock:
        q = q.with_for_update()
    return (await session.scalars(q)).first()


async def pending_counts(session: AsyncSession, creator: str) -> tuple[int, int]:
    """Pending tasks of ``creator`` and in all, in one statement."""
    pending = select(func.count()).select_from(Task).where(Task.status == TaskStatus.PENDING.value)
    mine = pending.where(Task.creator_address == creator)
    row = (await session.execute(select(mine.scalar_subquery(), pending.scalar_subquery()))).one()
    return int(row[0] or 0), int(row[1] or 0)


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


async def some_runner_fits(
    session: AsyncSession, task_id: uuid.UUID, *, unexcluded: bool = False
) -> bool:
    """Some online runner is big enough for the task (free capacity aside); with
    ``unexcluded``, one that has not failed it (then a runner that failed it waits; otherwise
    the task may go back to one that did)."""
    other = st.RUNNERS.alias("other")
    conditions = [*st.runner_fits(other, st.TASKS)]
    if unexcluded:
        conditions.append(~st.excluded_for(other.c.id))
    fits = exists().where(*conditions).correlate_except(other)
    q = select(st.TASKS.c.id).where(st.TASKS.c.id == task_id, fits)
    return (await session.execute(q)).first() is not None


_INSERT_RESULT = insert(_RESULTS)


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


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(select(Task.status, func.count()).group_by(Task.status))
    return {s: int(n) for s, n in rows.all()}


async def delete_finished_logs(session: AsyncSession, before: datetime, limit: int) -> int:
    """Drop at most ``limit`` log chunks of tasks that ended (completed, failed, cancelled)
    before ``before``; logs of tasks still open are kept whatever their age. Walks the log
    chunks (kept few by this very pruning) and looks each one's task up by its key: an ``IN
    (finished tasks)`` made SQLite read every task that ever finished (975 ms at 467,000
    tasks, with the write lock held, against 12 ms this way)."""
    chunk = aliased(TaskLog)
    finished = (
        select(1)
        .where(
            Task.id == chunk.task_id,
            Task.status.in_([s.value for s in TERMINAL]),
            Task.completed_at < before,
        )
        .correlate(chunk)
    )
    pick = select(chunk.id).where(exists(finished)).limit(limit)
    result = await session.execute(
        delete(TaskLog).where(TaskLog.id.in_(pick)).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
