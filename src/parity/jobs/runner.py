"""Periodic background jobs without a leader (ARCHITECTURE §2 "Loops").

Each job is a :class:`~parity.jobs.loop.BackgroundLoop` whose tick is one transaction. On
PostgreSQL it starts with ``pg_try_advisory_xact_lock(key)`` and skips when another replica
holds it; the lock only saves work, so a job must stay correct if two replicas run it anyway
(conditional UPDATEs, SKIP LOCKED). On SQLite the lock file keeps a single process, so no lock
is taken."""

from __future__ import annotations

import asyncio
import random as random_module
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parity.clock import Clock
from parity.db.session import Database
from parity.jobs.locks import TransactionAdvisoryLock, job_key
from parity.jobs.loop import BackgroundLoop, MetricsHook, TickOutcome, TickResult

__all__ = ["JobRunner", "PeriodicJob", "TickFn", "TickOutcome", "TickResult", "job_key"]

TickFn = Callable[[AsyncSession, datetime], Awaitable[int]]
JobLoop = BackgroundLoop[AsyncSession, int]


@dataclass
class PeriodicJob:
    name: str
    interval_seconds: float
    tick: TickFn
    wake: asyncio.Event | None = None  # set: the job ticks now rather than at its interval
    key: int = field(init=False)

    def __post_init__(self) -> None:
        self.key = job_key(self.name)


class JobRunner:
    """One loop per job; :meth:`run_tick` runs one tick of a job (tests call it)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        jobs: list[PeriodicJob],
        *,
        metrics: MetricsHook | None = None,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self.db = db
        self.clock = clock
        self.jobs = jobs
        self._metrics = metrics
        self._random = random
        self.loops: dict[str, JobLoop] = {j.name: self._loop_for(j) for j in jobs}

    def _loop_for(self, job: PeriodicJob) -> JobLoop:
        async def tick(session: AsyncSession) -> int:
            return await job.tick(session, self.clock.now())

        return BackgroundLoop(
            job.name,
            tick,
            TransactionAdvisoryLock(self.db, job.key),
            interval=job.interval_seconds,
            wake=job.wake,
            clock=self.clock,
            metrics=self._metrics,
            random=self._random,
        )

    @property
    def ticks(self) -> dict[str, int]:
        """Ticks that ran to the end, per job."""
        return {name: loop.stats.ticks for name, loop in self.loops.items()}

    async def run_tick(self, job: PeriodicJob) -> TickResult[int]:
        loop = self.loops.get(job.name)
        if loop is None:
            loop = self.loops[job.name] = self._loop_for(job)
        return await loop.run_tick()

    def start(self) -> None:
        for loop in self.loops.values():
            loop.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop every job at a tick boundary; a tick still running after ``timeout`` is
        cancelled."""
        await asyncio.gather(*(loop.stop(timeout) for loop in self.loops.values()))
