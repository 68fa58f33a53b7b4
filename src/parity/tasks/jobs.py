"""Background jobs of the queue: lease expiry, runner liveness, offer expiry."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.hooks import after_commit
from parity.jobs.runner import PeriodicJob
from parity.runners import service as runners_service
from parity.runners.service import RunnerConfig
from parity.tasks import lifecycle, runner_side, service
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


def liveness_job(
    deps: TaskDeps, runners: RunnerConfig, interval: float, timeout_seconds: float
) -> PeriodicJob:
    """Runners silent past the timeout go offline; their leases expire at once."""

    async def tick(session: AsyncSession, now: datetime) -> int:
        stale = await runners_service.mark_stale_offline(session, runners, now, timeout_seconds)
        await runner_side.runners_gone(session, deps, stale, now, sweep=True)
        return len(stale)

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
