"""The SQLite engine's one-hop cursor (parity.db.sqlite_driver): each statement is one call on
aiosqlite's thread, and what SQLAlchemy reads back (rows, rowcount, lastrowid, errors) is what
the driver's own cursor gives."""

from __future__ import annotations

from pathlib import Path

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


async def test_each_statement_is_one_call_on_the_connection_thread(
    db: Database, monkeypatch: pytest.MonkeyPatch
):
    calls: list[object] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: object, *args: object, **kw: object):
        calls.append(fn)
        return await original(self, fn, *args, **kw)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
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
