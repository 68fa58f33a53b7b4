"""Where ``fl_train`` tasks meet the task queue's per-type hooks, registered at start-up."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import TaskType
from parity.events.service import EventDeps
from parity.ledger.deps import LedgerDeps
from parity.tasks import billing as task_billing


async def close_fl_task(
    _session: AsyncSession, _deps: LedgerDeps, _task: Any, _events: EventDeps
) -> None:
    """An ``fl_train`` task holds no escrow of its own and is never billed by run time: the
    session's reward pool pays each accepted update when its round is aggregated."""
    return None


def register() -> None:
    """At start-up: FL training tasks are paid from their session's pool, not by run time."""
    task_billing.CLOSERS[TaskType.FL_TRAIN.value] = close_fl_task
