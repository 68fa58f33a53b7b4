"""The SQLite engine's cursors (parity.db.sqlite_driver): a read statement is one call on
aiosqlite's thread, a write transaction runs on the loop's thread with no call at all, and
what SQLAlchemy reads back (rows, rowcount, lastrowid, errors) is what the driver's own cursor
gives. A database locked by another process is waited for without blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from parity.db.session import Database


@pytest.fixture
async def db(tmp_path: Path):
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with database.transaction() as s:
        await s.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INT)"))
    yield database
    await database.dispose()


async def test_rows_rowcount_and_lastrowid_come_back_from_one_call(db: Database):
    async with db.transaction() as s:
        r = await s.execute(text("INSERT INTO t (name, n) VALUES ('a', 1)"))
        assert r.lastrowid == 1
        await s.execute(
            text("INSERT INTO t (name, n) VALUES (:name, :n)"),
            [{"name": "b", "n": 2}, {"name": "c", "n": 3}],
        )
        r = await s.execute(text("UPDATE t SET n = n + 10 WHERE n >= 2"))
        assert r.rowcount == 2
        r = await s.execute(text("UPDATE t SET n = n + 1 WHERE n > 100 RETURNING id"))
        assert r.all() == []
    async with db.read_session() as s:
        r = await s.execute(text("SELECT name, n FROM t ORDER BY id"))
        assert list(r.keys()) == ["name", "n"]
        assert [tuple(row) for row in r] == [("a", 1), ("b", 12), ("c", 13)]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every call made on a connection's aiosqlite thread, in order."""
    made: list[object] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: object, *args: object, **kw: object):
        made.append(fn)
        return await original(self, fn, *args, **kw)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return made


async def test_each_statement_is_one_call_on_the_connection_thread(
    db: Database, calls: list[object]
):
    async with db.read_session() as s:
        await s.execute(text("SELECT 1"))  # the pool's connection is checked out here
        calls.clear()
        for _ in range(5):
            assert (await s.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
        during = list(calls)
    assert len(during) == 5  # four calls each through SQLAlchemy's own aiosqlite cursor


async def test_driver_errors_surface_as_sqlalchemy_errors_and_roll_back(db: Database):
    async with db.transaction() as s:
        await s.execute(text("INSERT INTO t (name, n) VALUES ('a', 1)"))
    with pytest.raises(IntegrityError):
        async with db.transaction() as s:
            await s.execute(text("INSERT INTO t (name, n) VALUES ('z', 0)"))
            await s.execute(text("INSERT INTO t (name, n) VALUES ('a', 2)"))
    with pytest.raises(OperationalError, match="no such table"):
        async with db.read_session() as s:
            await s.execute(text("SELECT * FROM missing"))
    async with db.read_session() as s:
        names = (await s.execute(text("SELECT name FROM t"))).scalars().all()
    assert names == ["a"]  # the failed transaction left nothing behind


async def test_write_transactions_make_no_call_on_the_connection_thread(
    db: Database, calls: list[object]
):
    async with db.transaction() as s:
        await s.execute(text("INSERT INTO t (name, n) VALUES ('w', 1)"))  # connection checked out
        calls.clear()
        for i in range(5):
            await s.execute(text("UPDATE t SET n = :n WHERE name = 'w'"), {"n": i})
    assert calls == []  # BEGIN IMMEDIATE, five UPDATEs and the COMMIT ran on the loop's thread
    async with db.read_session() as s:
        assert (await s.execute(text("SELECT n FROM t WHERE name = 'w'"))).scalar_one() == 4


@contextlib.asynccontextmanager
async def _locked_elsewhere(tmp_path: Path, busy_ms: int) -> AsyncIterator[tuple[Database, Any]]:
    """A database with table t, and another process's view of it: a plain connection that
    has begun a write transaction (the caller ends it)."""
    path = tmp_path / "busy.db"
    database = Database(f"sqlite+aiosqlite:///{path}", busy_timeout_ms=busy_ms)
    try:
        async with database.transaction() as s:
            await s.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INT)"))
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t (name, n) VALUES ('other', 0)")
        try:
            yield database, other
        finally:
            other.close()
    finally:
        await database.dispose()


async def _names(database: Database) -> list[str]:
    async with database.read_session() as s:
        return list((await s.execute(text("SELECT name FROM t ORDER BY id"))).scalars().all())


async def test_a_locked_database_is_waited_for_without_blocking_the_loop(tmp_path: Path):
    async with _locked_elsewhere(tmp_path, 5000) as (database, other):
        ticks = 0

        async def write() -> None:
            async with database.transaction() as s:
                await s.execute(text("INSERT INTO t (name, n) VALUES ('mine', 1)"))

        writer = asyncio.ensure_future(write())
        for _ in range(20):  # 200 ms in which the loop must keep running other work
            await asyncio.sleep(0.01)
            ticks += 1
        assert not writer.done()  # still waiting for the other connection's lock
        other.execute("COMMIT")
        await asyncio.wait_for(writer, 5)
        assert ticks == 20
        assert await _names(database) == ["other", "mine"]


async def test_a_lock_held_past_the_busy_timeout_fails_the_write_cleanly(tmp_path: Path):
    async with _locked_elsewhere(tmp_path, 150) as (database, other):
        with pytest.raises(OperationalError, match="database is locked"):
            async with database.transaction() as s:
                await s.execute(text("INSERT INTO t (name, n) VALUES ('mine', 1)"))
        other.execute("ROLLBACK")
        async with database.transaction() as s:  # the write connection is usable again
            await s.execute(text("INSERT INTO t (name, n) VALUES ('after', 2)"))
        assert await _names(database) == ["after"]


# -- WAL checkpoints (parity.db.checkpoint) ------------------------------------------------------


async def _write_megabytes(db: Database, megabytes: int) -> None:
    async with db.transaction() as s:
        await s.execute(text("CREATE TABLE IF NOT EXISTS blobs (b BLOB)"))
    for _ in range(megabytes * 4):
        async with db.transaction() as s:
            await s.execute(text("INSERT INTO blobs (b) VALUES (randomblob(262144))"))


async def test_the_write_connection_never_checkpoints_on_the_loops_thread(tmp_path: Path):
    """Past SQLite's own threshold (1,000 pages: 4 MB) the write connection's commits would
    have copied the log into the database file on the loop's thread; with no checkpoint due
    from the worker, the log keeps everything and the database file stays as it was."""
    path = tmp_path / "no-checkpoint.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    assert db.checkpointer is not None
    db.checkpointer.every = 10**9
    try:
        await _write_megabytes(db, 8)
        assert (tmp_path / "no-checkpoint.db-wal").stat().st_size > 8 * 2**20
        assert path.stat().st_size < 2**16
        assert db.checkpointer.checkpoints == 0
    finally:
        await db.dispose()


async def test_the_wal_file_shrinks_back_once_the_log_restarts_after_a_burst(tmp_path: Path):
    """A burst (no checkpoint for 8 MB of writes) grows the WAL file; once a checkpoint has
    copied it all, the next commit restarts the log and cuts the file back to the limit
    instead of keeping the burst's size until the server stops."""
    path = tmp_path / "burst.db"
    wal = tmp_path / "burst.db-wal"
    db = Database(f"sqlite+aiosqlite:///{path}")
    assert db.checkpointer is not None
    db.checkpointer.every = 10**9
    db.checkpointer.wal_size_limit = 2**20
    try:
        await _write_megabytes(db, 8)
        assert wal.stat().st_size > 8 * 2**20
        await asyncio.get_running_loop().run_in_executor(None, db.checkpointer._checkpoint)
        async with db.transaction() as s:
            await s.execute(text("INSERT INTO blobs (b) VALUES (x'00')"))
        assert wal.stat().st_size <= 2**20
    finally:
        await db.dispose()


async def test_the_log_is_checkpointed_on_a_worker_thread_while_writes_go_on(tmp_path: Path):
    path = tmp_path / "checkpointed.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    assert db.checkpointer is not None
    db.checkpointer.every = 8
    loop_threads: set[int] = set()

    real = db.checkpointer._checkpoint

    def checkpoint() -> None:
        loop_threads.add(threading.get_ident())
        real()

    db.checkpointer._checkpoint = checkpoint  # type: ignore[method-assign]
    try:
        await _write_megabytes(db, 8)
        await db.checkpointer.drain()
        assert db.checkpointer.checkpoints >= 1
        assert threading.get_ident() not in loop_threads
        assert path.stat().st_size > 2**20  # the log's pages were copied into the database file
        async with db.read_session() as s:
            count = (await s.execute(text("SELECT count(*) FROM blobs"))).scalar()
        assert count == 32
    finally:
        await db.dispose()
