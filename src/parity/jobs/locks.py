"""The ways a background tick is made exclusive across replicas (see :mod:`parity.jobs.loop`).

The lock only saves work: every job stays correct if two replicas run it anyway (conditional
UPDATEs, SKIP LOCKED). On SQLite the server's lock file already keeps a single process, so
no lock is taken there."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.hooks import run_after_commit
from parity.db.session import Database
from parity.jobs.loop import TickLock

G = TypeVar("G")


def job_key(name: str) -> int:
    """A stable 31-bit advisory-lock key per job name (CRC-32, masked to stay positive)."""
    return zlib.crc32(f"parity.job.{name}".encode()) & 0x7FFFFFFF


class NoLock:
    """Always granted: for loops whose work is per-process (deliveries claim their rows)."""

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[bool | None]:
        yield True


class SessionAdvisoryLock:
    """``pg_try_advisory_lock(key)`` on a dedicated AUTOCOMMIT connection, held for the whole
    tick and released after it; for ticks made of several transactions that commit on their
    own (the settlement pass)."""

    def __init__(self, db: Database, key: int) -> None:
        self.db = db
        self.key = key

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[bool | None]:
        if self.db.is_sqlite:
            yield True
            return
        async with self.db.write_engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
            got = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}))
            if not got:
                yield None
                return
            try:
                yield True
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})


class TransactionAdvisoryLock:
    """The tick is one write transaction that starts with ``pg_try_advisory_xact_lock(key)``
    (the lock ends with it). The tick receives the session; the transaction commits when the
    tick returns, rolls back when it raises, and its after-commit callbacks run after the
    commit."""

    def __init__(self, db: Database, key: int) -> None:
        self.db = db
        self.key = key

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[AsyncSession | None]:
        async with self.db.write_session() as session:
            if not self.db.is_sqlite:
                got = await session.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": self.key}
                )
                if not got:
                    await session.rollback()
                    yield None
                    return
            yield session
            await session.commit()
        await run_after_commit(session)


class Serialized(Generic[G]):
    """Another lock taken behind an in-process ``asyncio.Lock``: ticks of one loop in this
    process (its own and direct ``run_tick`` calls) wait for each other instead of one being
    skipped by the other's hold on ``inner``."""

    def __init__(self, inner: TickLock[G]) -> None:
        self.inner = inner
        self._mutex = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[G | None]:
        async with self._mutex, self.inner.acquire() as grant:
            yield grant
