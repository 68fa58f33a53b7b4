"""Retention: prune expired nonces, old tokens, idempotency records, events and finished
webhook deliveries past EVENTS_RETENTION_DAYS, and the logs of tasks finished more than
TASK_LOG_RETENTION_DAYS ago. Ledger and settlement rows are never pruned (no ledger table is
touched here)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parity.auth import service as auth_service
from parity.events import service as events_service
from parity.idempotency import service as idempotency_service
from parity.jobs.runner import PeriodicJob
from parity.tasks import service as tasks_service


async def prune_once(session: AsyncSession, now: datetime) -> int:
    n = await auth_service.prune_expired(session, now)
    n += await idempotency_service.prune(session, now)
    return n


def retention_job(
    interval_seconds: float,
    events_retention_days: float = 30.0,
    task_log_retention_days: float = 30.0,
) -> PeriodicJob:
    async def tick(session: AsyncSession, now: datetime) -> int:
        n = await prune_once(session, now)
        n += await tasks_service.prune_logs(session, now, task_log_retention_days)
        return n + await events_service.prune(session, now, events_retention_days)

    return PeriodicJob("retention", interval_seconds, tick)
