"""Task events: what a task's creator (and operators) hear about it, through the events
service, in the transaction of the change."""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class TaskEvent:
    """One task event of a batch for :func:`emit_task_events`."""

    type: str
    task: Any
    extra: dict[str, Any] = field(default_factory=dict)


async def emit_task_events(session: AsyncSession, deps: TaskDeps, items: list[TaskEvent]) -> None:
    """Several task events in one pass (one insert; see ``events.service.emit_many``)."""
    await events_service.emit_many(
        session,
        deps.events,
        [
            events_service.NewEvent(
                e.type,
                e.task.creator_address,
                task_event_data(e.task, **e.extra),
                str(e.task.id),
            )
            for e in items
        ],
    )
