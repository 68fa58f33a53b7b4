"""Usage of runners as claims and placement count it (active claims, plus outstanding offers),
and what a runner could claim now (read only). The claim's own statements are in
``queue.statements``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Table,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import TaskStatus
from parity.tasks.models import Task, TaskAttempt
from parity.tasks.queue import statements as st
from parity.tasks.repository import ACTIVE_VALUES

_TASKS = cast(Table, Task.__table__)
_ATTEMPTS = cast(Table, TaskAttempt.__table__)


@dataclass(frozen=True)
class Usage:
    count: int
    cpu_cores: float
    memory_mb: int
    gpus: int


def _usage_sums() -> tuple[Any, Any, Any, Any]:
    """count, cpu, memory and GPUs summed over the selected tasks' requirements."""
    return (
        func.count(),
        func.coalesce(func.sum(Task.req_cpu_cores), 0.0),
        func.coalesce(func.sum(Task.req_memory_mb), 0),
        func.coalesce(func.sum(Task.req_gpus), 0),
    )


async def active_usage(session: AsyncSession, runner_id: uuid.UUID) -> Usage:
    q = select(*_usage_sums()).where(Task.runner_id == runner_id, Task.status.in_(ACTIVE_VALUES))
    row = (await session.execute(q)).one()
    return Usage(int(row[0]), float(row[1]), int(row[2]), int(row[3]))


async def claimable(
    session: AsyncSession,
    runner_id: uuid.UUID,
    now: datetime,
    *,
    free_cpu: float,
    free_memory: int,
    free_gpus: int,
    docker: bool,
    labels: dict[str, Any],
    limit: int,
    task_id: uuid.UUID | None = None,
    lock: bool = True,
) -> list[Task]:
    """Pending tasks this runner may take (its resources left, docker, its labels), best
    first, locked with SKIP LOCKED so concurrent claimers on PostgreSQL never wait on each
    other's rows."""
    postgres = session.get_bind().dialect.name == "postgresql"
    q = (
        select(Task)
        .where(
            *st.may_take(runner_id, now),
            Task.req_cpu_cores <= free_cpu + 1e-9,
            Task.req_memory_mb <= free_memory,
            Task.req_gpus <= free_gpus,
            st.labels_fit(postgres),
        )
        .params(b_labels=json.dumps(labels))
    )
    if not docker:
        q = q.where(Task.req_docker.is_(False))
    if task_id is not None:
        q = q.where(Task.id == task_id)
    q = q.order_by(Task.priority.desc(), Task.available_at, Task.id).limit(limit)
    if lock:
        q = q.with_for_update(skip_locked=True)
    return list((await session.scalars(q)).all())


async def committed_usages(
    session: AsyncSession, runner_ids: Sequence[uuid.UUID], now: datetime
) -> dict[uuid.UUID, Usage]:
    """Per runner: its active claims plus the pending tasks offered to it (offer not expired),
    counted and with their summed requirements, so placement never offers beyond what a claim
    would accept."""
    if not runner_ids:
        return {}
    sums = _usage_sums()
    active = (
        select(Task.runner_id, *sums)
        .where(Task.runner_id.in_(runner_ids), Task.status.in_(ACTIVE_VALUES))
        .group_by(Task.runner_id)
    )
    offered = (
        select(Task.target_runner_id, *sums)
        .where(
            Task.target_runner_id.in_(runner_ids),
            Task.status == TaskStatus.PENDING.value,
            Task.offer_expires_at > now,
        )
        .group_by(Task.target_runner_id)
    )
    out: dict[uuid.UUID, Usage] = {}
    for q in (active, offered):
        for rid, n, cpu, mem, gpus in (await session.execute(q)).all():
            if rid is None:
                continue
            u = out.get(rid, Usage(0, 0.0, 0, 0))
            out[rid] = Usage(
                u.count + int(n),
                u.cpu_cores + float(cpu),
                u.memory_mb + int(mem),
                u.gpus + int(gpus),
            )
    return out
