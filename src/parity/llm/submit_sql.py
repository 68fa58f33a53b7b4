"""The SQL of a prompt's submit, defined once at import (bound parameters, one compiled form
each): one read of what routing and the queue's pending limits need, then the new rows (the
task row, its offer and events as ``tasks.internal.stage_internal_task`` stages them). On
PostgreSQL the rows are one statement: the ``llm`` task, the prompt, the offer's push, the
task's events and their webhook deliveries (data-modifying CTEs, as the queue's completion
does). SQLite has no data-modifying CTEs: there each table gets its own insert and the events
go through the events service."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, true, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.hooks import after_commit
from parity.events import fanout
from parity.llm.models import Prompt
from parity.llm.repository import PROMPTS, SERVING, Loaded, loaded_of
from parity.tasks.deps import TaskDeps
from parity.tasks.events import emit_task_events, task_event_data
from parity.tasks.internal import StagedTask, pending_counts_columns
from parity.tasks.models import RunnerPush
from parity.tasks.queue.statements import EVENTS, TASKS

PUSHES = cast(Table, RunnerPush.__table__)


def _routing() -> Any:
    """The creator's and all pending tasks, with every runner serving the model (none: one
    row of counts and NULLs)."""
    creator = bindparam("b_creator", type_=TASKS.c.creator_address.type)
    mine, total = pending_counts_columns(creator)
    counts = select(mine.label("mine"), total.label("total")).subquery("counts")
    serving = SERVING.subquery("serving")
    return (
        select(counts.c.mine, counts.c.total, *serving.c)
        .select_from(counts.outerjoin(serving, true()))
        .order_by(serving.c.runner_id)
    )


ROUTING = _routing()


@dataclass(frozen=True)
class Routing:
    pending: tuple[int, int]  # the creator's pending tasks, all pending tasks
    loaded: list[Loaded]  # the runners serving the model (repository.serving_with_load)


async def read_routing(session: AsyncSession, model: str, creator: str) -> Routing:
    rows = (await session.execute(ROUTING, {"b_model": model, "b_creator": creator})).all()
    first = rows[0]
    loaded = [loaded_of(r) for r in rows if r.runner_id is not None]
    return Routing((int(first.mine or 0), int(first.total or 0)), loaded)


def _binds(table: Table, prefix: str) -> dict[str, Any]:
    return {
        c.key: bindparam(f"{prefix}{c.key}", type_=c.type)
        for c in table.c
        if not (c.primary_key and c.autoincrement is True)
    }


def _write(events: int, push: bool) -> Any:
    """PostgreSQL: the task, prompt, push (``push``) and ``events`` event rows, and the
    events' deliveries; answers how many deliveries were queued."""
    ctes = [
        insert(TASKS).values(_binds(TASKS, "t_")).cte("new_task"),
        insert(PROMPTS).values(_binds(PROMPTS, "p_")).cte("new_prompt"),
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


# (events, push): unrouted (task.created), routed (and offered), routed with a push.
WRITES = {(1, False): _write(1, False), (2, False): _write(2, False), (2, True): _write(2, True)}
INSERT_TASK, INSERT_PROMPT, INSERT_PUSH = insert(TASKS), insert(PROMPTS), insert(PUSHES)


def prompt_values(prompt: Prompt) -> dict[str, Any]:
    return {c.key: getattr(prompt, c.key) for c in PROMPTS.c}


async def insert_submission(
    session: AsyncSession, deps: TaskDeps, staged: StagedTask, prompt: dict[str, Any]
) -> None:
    """Write the staged task, its prompt row (``prompt``: its columns), its push and its
    events with their deliveries; the events' readers are woken after commit (as
    ``events.service.emit_many`` does)."""
    if session.get_bind().dialect.name != "postgresql":
        await session.execute(INSERT_TASK, staged.row)
        await session.execute(INSERT_PROMPT, prompt)
        if staged.push is not None:
            await session.execute(INSERT_PUSH, staged.push)
        await emit_task_events(session, deps, staged.events)
        return
    params: dict[str, Any] = {"b_admins": deps.events.admins_sorted}
    params.update({f"t_{k}": v for k, v in staged.row.items()})
    params.update({f"p_{k}": v for k, v in prompt.items()})
    if staged.push is not None:
        params.update({f"r_{k}": v for k, v in staged.push.items()})
    now = deps.events.clock.now()
    task = staged.task
    owner = task.creator_address.lower()
    for i, e in enumerate(staged.events):
        params.update(
            {
                f"e{i}_id": uuid.uuid4(),
                f"e{i}_type": e.type,
                f"e{i}_owner_address": owner,
                f"e{i}_resource_id": str(task.id),
                f"e{i}_data": task_event_data(task, **e.extra),
                f"e{i}_created_at": now,
            }
        )
    statement = WRITES[(len(staged.events), staged.push is not None)]
    deliveries = int((await session.execute(statement, params)).scalar_one())
    hub, about = deps.events.hub, (str(task.id),)

    def wake() -> None:
        hub.publish([owner], deliveries=deliveries > 0, resources=about)

    after_commit(session, wake)
