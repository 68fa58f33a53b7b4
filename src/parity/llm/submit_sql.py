"""The SQL of a prompt's submit, defined once at import (bound parameters, one compiled form
each): one read of what routing and the queue's pending limits need, then the new rows (the
task row, its offer and events as ``tasks.internal.stage_internal_task`` stages them). On
PostgreSQL the rows are one statement: the ``llm`` task, the prompt, the offer's push, the
task's events and their webhook deliveries (data-modifying CTEs, as the queue's completion
does). SQLite has no data-modifying CTEs: there each table gets its own insert and the events
go through the events service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from parity.llm.models import Prompt
from parity.llm.repository import PROMPTS, SERVING, Loaded, loaded_of
from parity.tasks import staged_sql
from parity.tasks.deps import TaskDeps
from parity.tasks.internal import StagedTask, pending_counts_columns
from parity.tasks.queue.statements import TASKS


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


def prompt_values(prompt: Prompt) -> dict[str, Any]:
    return {c.key: getattr(prompt, c.key) for c in PROMPTS.c}


async def insert_submission(
    session: AsyncSession, deps: TaskDeps, staged: StagedTask, prompt: dict[str, Any]
) -> None:
    """Write the staged task with its prompt row (``prompt``: its columns) and the rest of
    what was staged (:func:`parity.tasks.staged_sql.insert_staged`)."""
    await staged_sql.insert_staged(session, deps, staged, PROMPTS, prompt)
