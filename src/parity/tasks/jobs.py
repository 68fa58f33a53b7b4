"""Background jobs of the queue: lease expiry, runner liveness, offer expiry."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.hooks import after_commit
from parity.jobs.runner import PeriodicJob
from parity.runners import service as runners_service
from parity.tasks import lifecycle, service
from parity.tasks import queue_repository as queue_repo
from parity.tasks.deps import TaskDeps


def lease_expiry_job(deps: TaskDeps, interval: float) -> PeriodicJob:
    async def tick(session: AsyncSession, now: datetime) -> int:
        n = await lifecycle.expire_leases(session, deps, now)
        if n:
            wakeups = deps.wakeups

            def wake() -> None:
                wakeups.wake_any(n)

            after_commit(session, wake)
        return n

    return PeriodicJob("lease_expiry", interval, tick)


def liveness_job(deps: TaskDeps, interval: float, timeout_seconds: float) -> PeriodicJob:
    async def tick(session: AsyncSession, now: datetime) -> int:
        return await runners_service.mark_stale_offline(session, deps, now, timeout_seconds)

    return PeriodicJob("liveness", interval, tick)


def offer_expiry_job(deps: TaskDeps, interval: float) -> PeriodicJob:
    async def tick(session: AsyncSession, now: datetime) -> int:
        n = await queue_repo.expire_offers(session, now)
        if n:
            wakeups = deps.wakeups

            def wake() -> None:
                wakeups.wake_any(n)

            after_commit(session, wake)
        return n

    return PeriodicJob("offer_expiry", interval, tick)


def reoffer_job(deps: TaskDeps, interval: float) -> PeriodicJob:
    async def tick(session: AsyncSession, now: datetime) -> int:
        return await service.reoffer_pending(session, deps, now)

    return PeriodicJob("reoffer", interval, tick)
