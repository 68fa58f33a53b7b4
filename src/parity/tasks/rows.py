"""A new task row, and the pending-work limits every creator meets (compute tasks and the
internal tasks other domains own): built in one place so every kind starts alike."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.tasks import repository as repo
from parity.tasks.deps import TaskDeps
from parity.tasks.errors import QueueFull, TooManyPending
from parity.tasks.models import Task
from parity.tasks.queue import transitions as tr


async def check_pending_limits(session: AsyncSession, deps: TaskDeps, creator: str) -> None:
    """429 for a creator at its pending limit, 503 when the whole queue is."""
    mine, total = await repo.pending_counts(session, creator)
    refuse_over_limits(deps, mine, total)


def refuse_over_limits(deps: TaskDeps, mine: int, total: int) -> None:
    """:func:`check_pending_limits` on counts read by the caller (the creator's pending tasks,
    all pending tasks)."""
    if mine >= deps.max_pending_per_client:
        raise TooManyPending(
            f"you have {deps.max_pending_per_client} pending tasks; wait for some to run"
        )
    if total >= deps.max_pending_total:
        raise QueueFull(f"the queue holds {deps.max_pending_total} pending tasks; retry later")


def new_task(
    deps: TaskDeps,
    now: datetime,
    *,
    task_type: str,
    title: str,
    config: dict[str, Any],
    creator: str,
    max_attempts: int,
    **fields: Any,
) -> Task:
    """A pending task (the initial status), unclaimed and unoffered; ``fields`` sets the
    requirements, timing and descriptive columns a kind has (defaults: none required)."""
    values: dict[str, Any] = {
        "description": "",
        "environment": None,
        "req_cpu_cores": 0.0,
        "req_memory_mb": 0,
        "req_gpus": 0,
        "req_docker": False,
        "required_labels": {},
        "priority": 0,
        "timeout_seconds": None,
        "available_at": now,
        **fields,
    }
    return Task(
        id=uuid.uuid4(),
        title=title,
        type=task_type,
        status=tr.INITIAL.value,
        config=config,
        creator_address=creator,
        nonce=deps.random_bytes(32).hex(),
        max_attempts=max_attempts,
        attempts=0,
        releases=0,
        target_runner_id=None,
        offer_expires_at=None,
        runner_id=None,
        claim_token_hash=None,
        lease_expires_at=None,
        started_at=None,
        completed_at=None,
        cancel_requested_at=None,
        last_error=None,
        log_bytes=0,
        created_at=now,
        updated_at=now,
        **values,
    )
