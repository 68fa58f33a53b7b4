"""The PostgreSQL connection pool keeps every connection it opens: a burst up to its ceiling
opens connections once, and later bursts reuse them (an overflow connection closed on return
made every burst above the pool's size open, authenticate and prepare new connections)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event, text

from parity.db.session import Database


@pytest.mark.postgres_only
async def test_bursts_reuse_the_pools_connections(database_url: str) -> None:
    db = Database(database_url, pool_size=3)
    opened = 0

    def on_connect(*_: object) -> None:
        nonlocal opened
        opened += 1

    event.listen(db.write_engine.sync_engine, "connect", on_connect)
    ceiling = 2 * 3
    release = asyncio.Event()
    holding = 0

    async def hold() -> None:
        nonlocal holding
        async with db.write_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            holding += 1
            await release.wait()

    try:
        for _ in range(3):  # three bursts to the ceiling
            release.clear()
            holding = 0
            tasks = [asyncio.create_task(hold()) for _ in range(ceiling)]
            while holding < ceiling:
                await asyncio.sleep(0.01)
            release.set()
            await asyncio.gather(*tasks)
        assert opened == ceiling  # opened in the first burst, reused by the next two
        assert db.write_engine.pool.checkedin() == ceiling
    finally:
        await db.dispose()
