"""Aggregate task counts for the status page: a few aggregate statements, never rows.

Kept apart from the queue's repositories so the status page's reads cannot slow the hot path's
modules down or get tangled with them; every function returns plain dicts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import ACTIVE, TaskStatus
from parity.tasks.models import Task

_PENDING = TaskStatus.PENDING.value


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    """Every task status, zeros included. One GROUP BY on ``status``, the leading column of
    ``ix_tasks_queue``: PostgreSQL answers it from the index without reading the rows."""
    rows = await session.execute(select(Task.status, func.count()).group_by(Task.status))
    found = {str(status): int(n) for status, n in rows.all()}
    return {s.value: found.get(s.value, 0) for s in TaskStatus}


async def queue_depth(session: AsyncSession, now: datetime) -> dict[str, Any]:
    """``pending``, ``ready`` (pending and available at ``now``: not held back by a retry
    back-off or ``not_before``) and the age of the oldest pending task in seconds since it was
    created (None when nothing is pending). One statement over the pending rows only, which the
    partial index ``ix_tasks_pending_order`` finds, so finished tasks cost nothing here."""
    ready = func.coalesce(func.sum(case((Task.available_at <= now, 1), else_=0)), 0)
    row = (
        await session.execute(
            select(func.count(), ready, func.min(Task.created_at)).where(Task.status == _PENDING)
        )
    ).one()
    pending, ready_n, oldest = int(row[0]), int(row[1]), row[2]
    age = None if oldest is None else max((now - oldest).total_seconds(), 0.0)
    return {"pending": pending, "ready": ready_n, "oldest_pending_age_seconds": age}


def claim_holders() -> Select[Any]:
    """The ids of runners holding a claim (a task assigned, running or cancel_requested), as a
    subquery for the runner counts: the runner registry then needs nothing from this package.
    The statuses lead ``ix_tasks_lease``, so only the active rows are read."""
    return select(Task.runner_id).where(
        Task.status.in_([s.value for s in ACTIVE]), Task.runner_id.is_not(None)
    )
