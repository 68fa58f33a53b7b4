"""Shared fixtures. The suite runs against SQLite (default) or PostgreSQL:

    PARITY_TEST_DB=postgres PARITY_TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres

PostgreSQL runs get one migrated database per session and truncate every table between tests."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from parity.app import create_app
from parity.clock import FrozenClock
from parity.config import Settings, load_settings
from parity.container import Container
from parity.db import migrate
from parity.db.registry import Base
from parity.db.session import Database

# Reports where the event loop stood still, for a failing test and in the run's summary.
pytest_plugins = ["tests.stall_watch"]

TEST_DB = os.environ.get("PARITY_TEST_DB", "sqlite")
PG_ADMIN_URL = os.environ.get(
    "PARITY_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


def pytest_report_header(config: pytest.Config) -> str:
    return f"parity test database: {TEST_DB}" + (
        f" ({PG_ADMIN_URL})" if TEST_DB == "postgres" else ""
    )


# A test touches the configured database exactly when one of these fixtures is in its fixture
# closure (directly or through `container`, `client`, ...). Deciding by the closure rather than
# by a list of files keeps the split right as tests are added: `scripts/test.sh` runs every test
# on SQLite and only `-m db` again on PostgreSQL. A test that reaches the database some other way
# marks itself with `@pytest.mark.db`.
DB_FIXTURES = frozenset({"database_url", "fresh_database_url", "pg_session_url"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "db: touches the configured test database (set automatically for tests using "
        + ", ".join(sorted(DB_FIXTURES))
        + "); these run on both SQLite and PostgreSQL",
    )


def uses_database(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return item.get_closest_marker("db") is not None or not DB_FIXTURES.isdisjoint(names)


# tryfirst: the `db` marker must be on the items before `-m` deselects by it.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="PostgreSQL-only property (set PARITY_TEST_DB=postgres)")
    for item in items:
        if uses_database(item):
            item.add_marker(pytest.mark.db)
        if TEST_DB != "postgres" and "postgres_only" in item.keywords:
            item.add_marker(skip)


def pg_url(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


async def create_pg_database(name: str) -> str:
    engine = create_async_engine(PG_ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()
    return pg_url(name)


async def drop_pg_database(name: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await engine.dispose()


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str | None]:
    if TEST_DB != "postgres":
        yield None
        return
    name = f"parity_test_{uuid.uuid4().hex[:10]}"
    url = asyncio.run(create_pg_database(name))
    asyncio.run(migrate.upgrade(url))
    yield url
    asyncio.run(drop_pg_database(name))


async def _truncate(url: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} CASCADE"))
    await engine.dispose()


@pytest.fixture
async def database_url(tmp_path: Path, pg_session_url: str | None) -> AsyncIterator[str]:
    if pg_session_url is None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'parity.db'}"
        await migrate.upgrade(url)
        yield url
    else:
        yield pg_session_url
        await _truncate(pg_session_url)


@pytest.fixture
async def fresh_database_url(tmp_path: Path) -> AsyncIterator[str]:
    """An empty, unmigrated database of the configured kind."""
    if TEST_DB == "postgres":
        name = f"parity_fresh_{uuid.uuid4().hex[:10]}"
        url = await create_pg_database(name)
        yield url
        await drop_pg_database(name)
    else:
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"


ADMIN = Account.from_key("0x" + "11" * 32)
ALICE = Account.from_key("0x" + "22" * 32)
BOB = Account.from_key("0x" + "33" * 32)


def make_settings(database_url: str, home: Path, **extra: Any) -> Settings:
    env = {
        "DATABASE_URL": database_url,
        "PARITY_HOME": str(home),
        "ADMIN_ADDRESSES": ADMIN.address,
        "SERVER_PUBLIC_URL": "http://parity.test",
        "LOG_LEVEL": "warning",
    }
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return load_settings(env, env_file=None)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def container(
    database_url: str, tmp_path: Path, clock: FrozenClock
) -> AsyncIterator[Container]:
    settings = make_settings(database_url, tmp_path / "home")
    c = Container(settings=settings, db=Database(settings.resolved_database_url), clock=clock)
    yield c
    await c.db.dispose()


@pytest.fixture
async def client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(container, run_migrations=False, start_jobs=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://parity.test") as c,
    ):
        yield c


async def sign_in(client: httpx.AsyncClient, account: Any) -> str:
    r = await client.post("/api/v1/auth/nonce", json={"address": account.address})
    assert r.status_code == 200, r.text
    body = r.json()
    sig = account.sign_message(encode_defunct(text=body["message"])).signature.hex()
    r = await client.post(
        "/api/v1/auth/token",
        json={"address": account.address, "signature": sig, "nonce": body["nonce"]},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class LoopStalls:
    """Watches the running event loop: ``longest`` is the longest time (seconds) a 50 ms ticker
    was late, i.e. how long the whole process stood still (a blocking call, or the machine).
    For tests whose premise is a timing (a token within a limit) that such a stall voids."""

    TICK = 0.05

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.TICK)
            now = time.monotonic()
            self.longest = max(self.longest, now - last - self.TICK)
            last = now

    async def __aenter__(self) -> LoopStalls:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds (checked every 20 ms); fail after ``timeout`` seconds.
    ``predicate`` may be a coroutine function, e.g. one that asks the API."""
    for _ in range(int(timeout / 0.02)):
        held = predicate()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not reached in time")
