"""Task rows of work another domain owns (a prompt's ``llm`` task; later an FL round's
``fl_train`` tasks): created in the owner's transaction, never placed by compute placement,
routed by the owner to one runner (only that runner may claim it), and given up by the owner
with a reason. Every status change still goes through ``queue.transitions``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import TaskStatus, TaskType
from parity.tasks import repository as repo
from parity.tasks import service
from parity.tasks.deps import TaskDeps
from parity.tasks.events import TaskEvent, emit_task_events
from parity.tasks.models import Task
from parity.tasks.queue import transitions as tr
from parity.tasks.rows import check_pending_limits, new_task, refuse_over_limits

TASKS_TABLE = cast(Table, Task.__table__)


def pending_counts_columns(creator: Any) -> tuple[Any, Any]:
    """The pending tasks of ``creator`` and in all, as scalar subqueries: an owner that reads
    them along with its own columns, in one statement, checks them with
    :func:`stage_internal_task`."""
    pending = select(func.count()).select_from(Task).where(Task.status == TaskStatus.PENDING.value)
    mine = pending.where(Task.creator_address == creator)
    return mine.scalar_subquery(), pending.scalar_subquery()


@dataclass(frozen=True)
class StagedTask:
    """An internal task's rows, for its owner to insert with its own (one statement on
    PostgreSQL). ``task`` is not in the session."""

    task: Task
    row: dict[str, Any]  # the tasks row
    events: list[TaskEvent]  # task.created, then task.offered when routed
    push: dict[str, Any] | None  # the runner_pushes row of a pushed offer


def stage_internal_task(
    session: AsyncSession,
    deps: TaskDeps,
    *,
    pending: tuple[int, int],
    task_type: TaskType,
    creator: str,
    title: str,
    config: dict[str, Any],
    max_attempts: int,
    offer_to: uuid.UUID | None = None,
    push: bool = False,
) -> StagedTask:
    """The task row of work another domain owns (a prompt's ``llm`` task), staged for that
    domain to write in its own transaction: the queue's pending limits (``pending``: the
    creator's and all pending tasks, read by the owner with :func:`pending_counts_columns`),
    the row, its offer to ``offer_to`` when the owner has routed it already (``push``: that
    runner has a push URL; else it is offered later, :func:`target_internal_task`), its
    events and wake-ups; nothing is written here. No compute placement and no escrow: the
    owner prices the work itself."""
    refuse_over_limits(deps, *pending)
    now = deps.clock.now()
    task = new_task(
        deps,
        now,
        task_type=task_type.value,
        title=title,
        config=config,
        creator=creator,
        max_attempts=max_attempts,
    )
    events = [TaskEvent("task.created", task, {"type": task.type})]
    push_row = None
    if offer_to is not None:
        offered, push_row = service.offer_rows(
            session, deps, task, offer_to, now, push=push, expires=None
        )
        events.append(offered)
    row = {c.key: getattr(task, c.key) for c in TASKS_TABLE.c}
    return StagedTask(task, row, events, push_row)


@dataclass(frozen=True)
class Routed:
    """One internal task to create already routed to its runner."""

    title: str
    config: dict[str, Any]
    runner_id: uuid.UUID
    push: bool  # the runner has a push URL: queue its signed ``task.offered``


async def create_routed_internal_tasks(
    session: AsyncSession,
    deps: TaskDeps,
    *,
    task_type: TaskType,
    creator: str,
    items: Sequence[Routed],
    max_attempts: int,
) -> list[Task]:
    """Several internal tasks (an FL round's), each offered to its runner from the start: the
    rows, events and offers :func:`stage_internal_task` then :func:`target_internal_task`
    give, in one pass (one limit check, one batched insert; a new task has no exclusions)."""
    await check_pending_limits(session, deps, creator)
    now = deps.clock.now()
    tasks = []
    for item in items:
        task = new_task(
            deps,
            now,
            task_type=task_type.value,
            title=item.title,
            config=item.config,
            creator=creator,
            max_attempts=max_attempts,
        )
        task.target_runner_id = item.runner_id
        tasks.append(task)
    session.add_all(tasks)
    events: list[TaskEvent] = []
    for task, item in zip(tasks, items, strict=True):
        events.append(TaskEvent("task.created", task, {"type": task.type}))
        events.append(
            service.stage_offer(
                session, deps, task, item.runner_id, now, push=item.push, expires=None
            )
        )
    await session.flush()
    await emit_task_events(session, deps, events)
    return tasks


async def target_internal_task(
    session: AsyncSession, deps: TaskDeps, task_id: uuid.UUID, runner_id: uuid.UUID, *, push: bool
) -> bool:
    """Route a pending internal task to a runner (only it may claim it; a runner that has not
    failed it takes it without the retry backoff). False when the task is no longer pending."""
    task = await repo.get(session, task_id, lock=True)
    if task is None or task.status != TaskStatus.PENDING:
        return False
    now = deps.clock.now()
    if runner_id not in await repo.exclusions(session, task.id):
        task.available_at = min(task.available_at, now)
    await service.offer_to(session, deps, task, runner_id, now, push=push, expires=None)
    return True


async def end_internal_task(
    session: AsyncSession, deps: TaskDeps, task_id: uuid.UUID, reason: str
) -> bool:
    """Cancel a pending internal task that its owner gives up on (a prompt past its deadline),
    with ``reason`` as its ``last_error``. False when it is no longer pending."""
    task = await repo.get(session, task_id, lock=True)
    if task is None or task.status != TaskStatus.PENDING:
        return False
    task.last_error = reason
    await tr.transition(session, deps, task, tr.CANCEL, now=deps.clock.now())
    return True


async def cancel_internal_task(
    session: AsyncSession, deps: TaskDeps, task_id: uuid.UUID, reason: str
) -> bool:
    """Cancel an internal task whatever runner holds it (an FL session cancelled, a round
    given up): pending/assigned → cancelled, running → cancel_requested (the runner hears it
    through its lease or heartbeat answer). ``reason`` becomes its ``last_error``. False when
    it had already ended or a cancel was already asked for."""
    task = await repo.get(session, task_id, lock=True)
    if task is None:
        return False
    now = deps.clock.now()
    if task.status in (TaskStatus.PENDING, TaskStatus.ASSIGNED):
        attempt = await repo.current_attempt(session, task) if task.status == "assigned" else None
        task.last_error = reason
        await tr.transition(session, deps, task, tr.CANCEL, now=now, attempt=attempt)
        return True
    if task.status == TaskStatus.RUNNING:
        task.last_error = reason
        await tr.transition(session, deps, task, tr.REQUEST_CANCEL, now=now)
        return True
    return False
