"""Periodic background jobs without a leader (ARCHITECTURE §2 "Loops").

Each tick is one transaction. On PostgreSQL it starts with ``pg_try_advisory_xact_lock(key)``
and skips when another replica holds it; the lock only saves work, so a job must stay correct
if two replicas run it anyway (conditional UPDATEs, SKIP LOCKED). On SQLite the lock file keeps
a single process, so no lock is taken."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parity.clock import Clock
from parity.db.hooks import run_after_commit
from parity.db.session import Database
from parity.logging import get_logger

log = get_logger("parity.jobs")

TickFn = Callable[[AsyncSession, datetime], Awaitable[int]]


def job_key(name: str) -> int:
    """A stable 31-bit advisory-lock key per job name (CRC-32, masked to stay positive)."""
    return zlib.crc32(f"parity.job.{name}".encode()) & 0x7FFFFFFF


class TickOutcome(StrEnum):
    RAN = "ran"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class PeriodicJob:
    name: str
    interval_seconds: float
    tick: TickFn
    key: int = field(init=False)

    def __post_init__(self) -> None:
        self.key = job_key(self.name)


@dataclass
class TickResult:
    outcome: TickOutcome
    items: int = 0


class JobRunner:
    def __init__(self, db: Database, clock: Clock, jobs: list[PeriodicJob]) -> None:
        self.db = db
        self.clock = clock
        self.jobs = jobs
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.ticks: dict[str, int] = {j.name: 0 for j in jobs}

    async def run_tick(self, job: PeriodicJob) -> TickResult:
        async with self.db.write_session() as session:
            if not self.db.is_sqlite:
                got = await session.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": job.key}
                )
                if not got:
                    await session.rollback()
                    return TickResult(TickOutcome.SKIPPED)
            items = await job.tick(session, self.clock.now())
            await session.commit()
        await run_after_commit(session)
        self.ticks[job.name] += 1
        return TickResult(TickOutcome.RAN, items)

    async def _loop(self, job: PeriodicJob) -> None:
        while not self._stop.is_set():
            try:
                res = await self.run_tick(job)
                if res.items:
                    log.info("job_tick", job=job.name, items=res.items)
            except Exception as exc:
                log.warning("job_failed", job=job.name, error=type(exc).__name__, detail=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=job.interval_seconds)

    def start(self) -> None:
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._loop(j), name=f"job:{j.name}") for j in self.jobs]

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop at a tick boundary; a tick still running after ``timeout`` is cancelled."""
        self._stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._tasks = []
