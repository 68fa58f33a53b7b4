"""The lock strategies of the background loop against the database: a tick is skipped while
another connection holds its advisory lock (PostgreSQL), and a transaction-locked tick commits
when it returns and rolls back when it raises (both databases)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from parity.clock import FrozenClock
from parity.db.hooks import after_commit
from parity.db.session import Database
from parity.jobs.locks import SessionAdvisoryLock, TransactionAdvisoryLock, job_key
from parity.jobs.loop import BackgroundLoop, TickOutcome
from parity.ledger.models import SignerNonce

KEY = job_key("lock-probe")
Seen = list[tuple[str, TickOutcome, int, float]]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


def session_loop(db: Database, clock: FrozenClock, seen: Seen) -> BackgroundLoop[bool, int]:
    async def tick(_: bool) -> int:
        return 1

    return BackgroundLoop(
        "session-probe",
        tick,
        SessionAdvisoryLock(db, KEY),
        interval=60,
        clock=clock,
        metrics=lambda *args: seen.append(args),
    )


async def _nonce_rows(db: Database) -> list[str]:
    async with db.read_session() as s:
        return list((await s.scalars(select(SignerNonce.address))).all())


@pytest.mark.postgres_only
async def test_a_session_locked_tick_is_skipped_while_another_connection_holds_the_lock(
    db: Database, clock: FrozenClock
):
    seen: Seen = []
    loop = session_loop(db, clock, seen)
    other = Database(db.url)
    try:
        async with other.write_engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
            assert await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": KEY})
            assert (await loop.run_tick()).outcome is TickOutcome.SKIPPED
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": KEY})
        assert (await loop.run_tick()).outcome is TickOutcome.RAN
    finally:
        await other.dispose()
    assert [o for _, o, _, _ in seen] == [TickOutcome.SKIPPED, TickOutcome.RAN]
    assert loop.stats.skipped == 1 and loop.stats.ticks == 1


@pytest.mark.postgres_only
async def test_the_session_lock_is_released_after_the_tick(db: Database, clock: FrozenClock):
    loop = session_loop(db, clock, [])
    assert (await loop.run_tick()).outcome is TickOutcome.RAN
    async with db.write_engine.connect() as raw:
        conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
        assert await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": KEY})
        await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": KEY})


@pytest.mark.postgres_only
async def test_a_transaction_locked_tick_is_skipped_while_another_transaction_holds_the_lock(
    db: Database, clock: FrozenClock
):
    ran: list[int] = []

    async def tick(session: AsyncSession) -> int:
        ran.append(1)
        return 1

    loop = BackgroundLoop(
        "xact-probe", tick, TransactionAdvisoryLock(db, KEY), interval=60, clock=clock
    )
    async with db.write_session() as other:
        assert await other.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": KEY})
        assert (await loop.run_tick()).outcome is TickOutcome.SKIPPED
        await other.rollback()  # ends the transaction, and with it the lock
    assert (await loop.run_tick()).outcome is TickOutcome.RAN and ran == [1]


async def test_a_transaction_locked_tick_commits_on_return_and_rolls_back_on_error(
    db: Database, clock: FrozenClock
):
    committed: list[str] = []
    fail = [True, False]

    async def tick(session: AsyncSession) -> int:
        now: datetime = clock.now()
        address = "0x" + ("a" if fail[0] else "b") * 40
        session.add(SignerNonce(address=address, next_nonce=1, updated_at=now))
        await session.flush()
        after_commit(session, lambda: committed.append(address))
        if fail.pop(0):
            raise RuntimeError("tick failed after writing")
        return 1

    loop = BackgroundLoop(
        "xact-commit", tick, TransactionAdvisoryLock(db, KEY), interval=60, clock=clock
    )
    with pytest.raises(RuntimeError):
        await loop.run_tick()
    assert await _nonce_rows(db) == [] and committed == []
    assert (await loop.run_tick()).outcome is TickOutcome.RAN
    assert await _nonce_rows(db) == ["0x" + "b" * 40] and committed == ["0x" + "b" * 40]
