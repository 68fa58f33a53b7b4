"""Background jobs of the queue: lease expiry, runner liveness, offer expiry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.hooks import after_commit
from parity.jobs.runner import PeriodicJob
from parity.runners import service as runners_service
from parity.runners.service import RunnerConfig
from parity.tasks import lifecycle, runner_side, service
from parity.tasks import queue_repository as queue_repo
from parity.tasks.deps import TaskDeps


class StartupGrace:
    """True for ``seconds`` after the first tick of this process. While a server was down its
    runners could neither renew leases nor beat: what looks expired at start-up is usually
    alive, so the sweeps that judge by those timestamps wait one period after a (re)start."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._first: datetime | None = None

    def active(self, now: datetime) -> bool:
        if self._first is None:
            self._first = now
        return (now - self._first).total_seconds() < self.seconds


def lease_expiry_job(
    deps: TaskDeps,
    interval: float,
    *,
    startup_grace_seconds: float = 0.0,
    paused: Callable[[], bool] = lambda: False,
) -> PeriodicJob:
    """Claims whose lease ran out go back to the queue (or fail). ``paused``: while it holds
    (this server is draining, its listener closed, so runners cannot renew here) nothing
    expires; another replica, or this one after its restart grace, does it."""
    grace = StartupGrace(startup_grace_seconds)

    async def tick(session: AsyncSession, now: datetime) -> int:
        if grace.active(now) or paused():
            return 0
        n = await lifecycle.expire_leases(session, deps, now)
        if n:
            wakeups = deps.wakeups

            def wake() -> None:
                wakeups.wake_any(n)

            after_commit(session, wake)
        return n

    return PeriodicJob("lease_expiry", interval, tick)


def liveness_job(
    deps: TaskDeps,
    runners: RunnerConfig,
    interval: float,
    timeout_seconds: float,
    *,
    startup_grace_seconds: float = 0.0,
    paused: Callable[[], bool] = lambda: False,
) -> PeriodicJob:
    """Runners silent past the timeout go offline; their leases expire at once. Paused as
    lease expiry is (a draining server's runners cannot reach it)."""
    grace = StartupGrace(startup_grace_seconds)

    async def tick(session: AsyncSession, now: datetime) -> int:
        if grace.active(now) or paused():
            return 0
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
