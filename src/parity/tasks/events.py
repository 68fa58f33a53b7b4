"""Task events: what a task's creator (and operators) hear about it, through the events
service, in the transaction of the change."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.events import service as events_service
from parity.tasks.deps import TaskDeps


def task_event_data(task: Any, **extra: Any) -> dict[str, Any]:
    """The data of every task event: id, status, title, plus the event's own facts."""
    return {"task_id": str(task.id), "status": task.status, "title": task.title, **extra}


async def emit_task_event(
    session: AsyncSession, deps: TaskDeps, event_type: str, task: Any, **extra: Any
) -> None:
    await events_service.emit(
        session,
        deps.events,
        event_type,
        task.creator_address,
        task_event_data(task, **extra),
        str(task.id),
    )
