"""The queue's SQLite executor (parity.tasks.queue.executors.SqliteExecutor): statements run on
the write transaction's own connection give the values a session would (UUIDs, UTC datetimes,
JSON, booleans), expand IN lists, insert many rows at once, see what the session holds
unflushed, roll back with the transaction and raise SQLAlchemy's exceptions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Uuid,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import registry

from parity.db.session import Database
from parity.db.types import UTCDateTime
from parity.tasks.queue.executors import SessionExecutor, SqliteExecutor, executor_for

META = MetaData()
ITEMS = Table(
    "items",
    META,
    Column("id", Uuid, primary_key=True),
    Column("name", String(20), unique=True),
    Column("at", UTCDateTime()),
    Column("data", JSON),
    Column("flag", Boolean),
    Column("n", Integer),
)
BY_IDS = select(ITEMS).where(ITEMS.c.id.in_(bindparam("b_ids", expanding=True)))
BUMP = (
    update(ITEMS)
    .where(ITEMS.c.name == bindparam("b_name"))
    .values(n=ITEMS.c.n + 1, at=bindparam("b_at", type_=UTCDateTime()))
    .returning(ITEMS.c.id, ITEMS.c.n, ITEMS.c.at)
)
ADD = insert(ITEMS)


class Item:
    """ITEMS as an ORM class, to hold an unflushed object in the session."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


registry().map_imperatively(Item, ITEMS)
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _row(name: str, n: int = 0) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "name": name,
        "at": T0,
        "data": {"k": [1, 2], "name": name},
        "flag": n % 2 == 0,
        "n": n,
    }


@pytest.fixture
async def db(tmp_path: Path):
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    async with database.write_engine.begin() as conn:
        await conn.run_sync(META.create_all)
    yield database
    await database.dispose()


async def test_the_write_transaction_gets_the_connection_executor(db: Database):
    async with db.transaction() as s:
        assert isinstance(await executor_for(s), SqliteExecutor)
    async with db.read_session() as s:
        assert isinstance(await executor_for(s), SessionExecutor)  # a read: its thread


async def test_values_match_what_a_session_reads(db: Database):
    rows = [_row("a", 1), _row("b", 2), _row("c", 3)]
    async with db.transaction() as s:
        x = await executor_for(s)
        await x.execute(ADD, rows)  # many rows in one call
        got = await x.rows(BY_IDS, {"b_ids": [rows[0]["id"], rows[2]["id"]]})
        assert await x.rows(BY_IDS, {"b_ids": []}) == []
        later = T0 + timedelta(seconds=1)
        bumped = await x.rows(BUMP, {"b_name": "b", "b_at": later})
    async with db.read_session() as s:
        expected = {r.id: tuple(r) for r in (await s.execute(select(ITEMS))).all()}
    assert sorted(tuple(r) for r in got) == sorted(
        [expected[rows[0]["id"]], expected[rows[2]["id"]]]
    )
    first = next(r for r in got if r.name == "a")
    assert first.id == rows[0]["id"] and isinstance(first.id, uuid.UUID)
    assert first.at == T0 and first.at.tzinfo is not None
    assert first.data == {"k": [1, 2], "name": "a"} and first.flag is False
    assert [(r.id, r.n, r.at) for r in bumped] == [(rows[1]["id"], 3, later)]


async def test_an_object_the_session_holds_unflushed_is_seen(db: Database):
    row = _row("orm", 4)
    async with db.transaction() as s:
        s.add(Item(**row))
        got = await (await executor_for(s)).rows(BY_IDS, {"b_ids": [row["id"]]})
    assert [(r.name, r.n) for r in got] == [("orm", 4)]


async def test_a_rollback_undoes_what_it_ran(db: Database):
    with pytest.raises(RuntimeError):
        async with db.transaction() as s:
            x = await executor_for(s)
            await x.execute(ADD, _row("kept-out"))
            raise RuntimeError("abort")
    async with db.read_session() as s:
        assert (await s.execute(select(ITEMS.c.name))).all() == []


async def test_driver_errors_are_sqlalchemy_errors(db: Database):
    with pytest.raises(IntegrityError):
        async with db.transaction() as s:
            x = await executor_for(s)
            await x.execute(ADD, [_row("dup"), _row("dup")])
    async with db.transaction() as s:  # the connection is usable after the rollback
        await (await executor_for(s)).execute(ADD, _row("after"))
    async with db.read_session() as s:
        assert (await s.execute(select(ITEMS.c.name))).scalars().all() == ["after"]
