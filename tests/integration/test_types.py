"""Column types: token amounts stay exact at uint256 scale; timestamps come back as UTC."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, MetaData, Table, insert, select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from parity.db.types import TimestampRefused, TokenAmount, UTCDateTime

meta = MetaData()
probe = Table(
    f"type_probe_{uuid.uuid4().hex[:8]}",
    meta,
    Column("id", TokenAmount(), primary_key=False),
    Column("amount", TokenAmount()),
    Column("at", UTCDateTime()),
)


@pytest.mark.parametrize("amount", [0, 1, 10**24, 2**256 - 1, 9_223_372_036_854_775_808])
async def test_token_amounts_round_trip_exactly(database_url: str, amount: int):
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(meta.create_all)
            when = datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
            await conn.execute(insert(probe).values(id=1, amount=amount, at=when))
            row = (await conn.execute(select(probe.c.amount, probe.c.at))).one()
            assert row.amount == amount and isinstance(row.amount, int)
            assert row.at == when and row.at.tzinfo is not None
            assert row.at.utcoffset() == timedelta(0)
            assert row.at.hour == 10
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(meta.drop_all)
        await engine.dispose()


def test_naive_datetimes_and_float_amounts_are_refused():
    from sqlalchemy.dialects import sqlite

    with pytest.raises(TimestampRefused, match="must carry a timezone"):
        UTCDateTime().process_bind_param(datetime(2026, 1, 1), sqlite.dialect())
    with pytest.raises(TypeError):
        TokenAmount().process_bind_param(1.5, sqlite.dialect())  # type: ignore[arg-type]
    assert UTCDateTime().process_bind_param(datetime(2026, 1, 1, tzinfo=UTC), sqlite.dialect())


# Past year 9999 once in UTC: Python cannot convert it, so it has no UTC value to store.
BEYOND_9999 = datetime(9999, 12, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5)))
BEFORE_YEAR_1 = datetime(1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=14)))


@pytest.mark.parametrize("when", [BEYOND_9999, BEFORE_YEAR_1, datetime(2026, 1, 1)])
async def test_a_timestamp_without_a_utc_value_is_refused_as_invalid_input(
    database_url: str, when: datetime
):
    """Bound to a UTC column, a timestamp with no UTC equivalent is a 422-mapped InvalidInput
    raised as it is (not a StatementError, which the API would answer with a 500)."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(meta.create_all)
        async with engine.begin() as conn:
            with pytest.raises(TimestampRefused) as caught:
                await conn.execute(insert(probe).values(id=1, amount=1, at=when))
            assert caught.value.details == {"field": "timestamp"}
            with pytest.raises(TimestampRefused):
                await conn.execute(select(probe.c.id).where(probe.c.at < when))
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(meta.drop_all)
        await engine.dispose()
