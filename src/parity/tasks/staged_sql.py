"""The rows of an internal task staged by :func:`parity.tasks.internal.stage_internal_task`,
written beside its owner's row (a prompt's) in the owner's transaction. On PostgreSQL one
statement writes them all: the owner's row, the task, the offer's push, the task's events and
their webhook deliveries (data-modifying CTEs, as the queue's completion does). SQLite has no
data-modifying CTEs: there each table gets its own insert and the events go through the events
service. The statements are built once per shape (owner table, events, push)."""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.hooks import after_commit
from parity.events import fanout
from parity.tasks.deps import TaskDeps
from parity.tasks.events import emit_task_events, task_event_data
from parity.tasks.internal import StagedTask
from parity.tasks.models import RunnerPush
from parity.tasks.queue.statements import EVENTS, TASKS

PUSHES = cast(Table, RunnerPush.__table__)
_WRITES: dict[tuple[str, int, bool], Any] = {}


def _binds(table: Table, prefix: str) -> dict[str, Any]:
    return {
        c.key: bindparam(f"{prefix}{c.key}", type_=c.type)
        for c in table.c
        if not (c.primary_key and c.autoincrement is True)
    }


def _write(owner: Table, events: int, push: bool) -> Any:
    """PostgreSQL: the task, the ``owner`` row, the push (``push``) and ``events`` event rows,
    and the events' deliveries; answers how many deliveries were queued."""
    ctes = [
        insert(TASKS).values(_binds(TASKS, "t_")).cte("new_task"),
        insert(owner).values(_binds(owner, "p_")).cte("new_owner_row"),
    ]
    if push:
        ctes.append(insert(PUSHES).values(_binds(PUSHES, "r_")).cte("new_push"))
    # INSERT … SELECT … UNION ALL, not a multi-row VALUES: SQLAlchemy does not cache the
    # compiled form of the latter. The rows go in the order given (task.created first).
    rows = [_binds(EVENTS, f"e{i}_") for i in range(events)]
    event = (
        insert(EVENTS)
        .from_select(
            list(rows[0]),
            union_all(*(select(*(b.label(k) for k, b in row.items())) for row in rows)),
        )
        .returning(EVENTS.c.id, EVENTS.c.owner_address, EVENTS.c.type, EVENTS.c.created_at)
        .cte("new_event")
    )
    delivery = fanout.deliveries(
        event.c.id, event.c.owner_address, event.c.type, event.c.created_at, postgres=True
    ).cte("new_delivery")
    return select(func.count()).select_from(delivery).add_cte(*ctes, event)


async def insert_staged(
    session: AsyncSession,
    deps: TaskDeps,
    staged: StagedTask,
    owner: Table,
    owner_row: dict[str, Any],
) -> None:
    """Write the staged task, its owner's row (``owner_row``: the columns of ``owner``), its
    push and its events with their deliveries; the events' readers are woken after commit
    (as ``events.service.emit_many`` does)."""
    if session.get_bind().dialect.name != "postgresql":
        await session.execute(insert(TASKS), staged.row)
        await session.execute(insert(owner), owner_row)
        if staged.push is not None:
            await session.execute(insert(PUSHES), staged.push)
        await emit_task_events(session, deps, staged.events)
        return
    params: dict[str, Any] = {"b_admins": deps.events.admins_sorted}
    params.update({f"t_{k}": v for k, v in staged.row.items()})
    params.update({f"p_{k}": v for k, v in owner_row.items()})
    if staged.push is not None:
        params.update({f"r_{k}": v for k, v in staged.push.items()})
    now = deps.events.clock.now()
    task = staged.task
    creator = task.creator_address.lower()
    for i, e in enumerate(staged.events):
        params.update(
            {
                f"e{i}_id": uuid.uuid4(),
                f"e{i}_type": e.type,
                f"e{i}_owner_address": creator,
                f"e{i}_resource_id": str(task.id),
                f"e{i}_data": task_event_data(task, **e.extra),
                f"e{i}_created_at": now,
            }
        )
    shape = (owner.name, len(staged.events), staged.push is not None)
    statement = _WRITES.get(shape)
    if statement is None:
        statement = _WRITES[shape] = _write(owner, shape[1], shape[2])
    deliveries = int((await session.execute(statement, params)).scalar_one())
    hub, about = deps.events.hub, (str(task.id),)

    def wake() -> None:
        hub.publish([creator], deliveries=deliveries > 0, resources=about)

    after_commit(session, wake)
