"""Engines and units of work for SQLite (embedded) and PostgreSQL.

SQLite (ARCHITECTURE §2.1): WAL, synchronous=NORMAL, foreign_keys, busy_timeout; writes open
with BEGIN IMMEDIATE on a one-connection engine and are serialized by an asyncio lock, reads use
their own pool; the WAL is checkpointed on a worker thread, never in a commit on the loop's
thread (parity.db.checkpoint). PostgreSQL: one pooled engine for both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from parity.db import sqlite_driver
from parity.db.checkpoint import WalCheckpointer
from parity.db.hooks import discard_after_commit, run_after_commit


def _sqlite_engine(
    url: str,
    *,
    begin: str | None,
    inline: bool,
    pool_size: int,
    busy_ms: int,
    checkpointer: WalCheckpointer | None = None,
) -> AsyncEngine:
    """``begin``: the statement that opens a transaction (None: none is opened, each statement
    is its own). ``inline``: statements run on the loop's thread (sqlite_driver); SQLite itself
    must then never wait for a lock there, the driver waits in asyncio sleeps instead.
    ``checkpointer``: the engine writes; its connections never checkpoint the WAL themselves,
    this checkpoints it on a worker thread as transactions begin (parity.db.checkpoint)."""
    engine = create_async_engine(
        url,
        module=sqlite_driver.dbapi(inline_busy_s=busy_ms / 1000 if inline else None),
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=30,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the driver so BEGIN is ours to emit.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={0 if inline else int(busy_ms)}")
        if checkpointer is not None:
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute(f"PRAGMA journal_size_limit={int(checkpointer.wal_size_limit)}")
        cur.close()

    if begin is not None:

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql(begin)
            if checkpointer is not None:
                checkpointer.wrote()

    return engine


def _as_sqlalchemy_error(exc: asyncpg.PostgresError) -> DBAPIError:
    """The SQLAlchemy exception the asyncpg dialect would have raised for ``exc``."""
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return IntegrityError("driver statement", None, exc)
    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.CannotConnectNowError):
        return OperationalError("driver statement", None, exc)
    # Anything else (a deadlock, a serialization failure included) keeps its SQLSTATE on
    # ``orig`` for the error table.
    return DBAPIError("driver statement", None, exc)


class Database:
    """Owns the engines; hands out sessions. Services never commit: the boundary does."""

    def __init__(
        self, url: str, *, pool_size: int = 10, busy_timeout_ms: int = 5000, nullpool: bool = False
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.dialect = "sqlite" if self.is_sqlite else "postgresql"
        self.checkpointer: WalCheckpointer | None = None
        if self.is_sqlite:
            path = make_url(url).database
            if path and path != ":memory:" and not path.startswith("file:"):
                self.checkpointer = WalCheckpointer(path, busy_ms=busy_timeout_ms)
            self.write_engine = _sqlite_engine(
                url,
                begin="BEGIN IMMEDIATE",
                inline=True,
                pool_size=1,
                busy_ms=busy_timeout_ms,
                checkpointer=self.checkpointer,
            )
            self.read_engine = _sqlite_engine(
                url, begin="BEGIN", inline=False, pool_size=4, busy_ms=busy_timeout_ms
            )
            # One-statement lookups: no transaction (the statement is its own) and no thread
            # hop, so a lookup costs about what its statement does.
            self._sqlite_lookup: AsyncEngine | None = _sqlite_engine(
                url, begin=None, inline=True, pool_size=2, busy_ms=busy_timeout_ms
            )
            self._write_lock: asyncio.Lock | None = asyncio.Lock()
        else:
            if nullpool:
                engine = create_async_engine(url, poolclass=NullPool)
            else:
                # Every connection stays pooled (no overflow): an overflow connection is closed
                # when handed back, so a burst above the pool's size paid a new connection
                # (TLS attempt, authentication, type introspection, every statement prepared
                # again) per checkout, which slowed the loop, which kept connections out
                # longer: at 100 streamed prompts/s that fed back into multi-second stalls.
                # The ceiling is unchanged (twice DATABASE_POOL_SIZE); beyond it, requests
                # wait for a connection (up to pool_timeout).
                engine = create_async_engine(
                    url, pool_size=2 * pool_size, max_overflow=0, pool_timeout=10
                )
            self.write_engine = self.read_engine = engine
            self._write_lock = None
            self._sqlite_lookup = None
        # One-statement reads outside a unit of work (the bearer-token lookup): on PostgreSQL
        # in autocommit, so no BEGIN/ROLLBACK round trips around the one SELECT.
        self._lookup_engine = (
            self._sqlite_lookup
            if self._sqlite_lookup is not None
            else self.read_engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._writer = async_sessionmaker(self.write_engine, expire_on_commit=False)
        self._reader = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @property
    def engines(self) -> list[AsyncEngine]:
        """Every engine this database runs statements on, each once (for instrumentation: on
        PostgreSQL the lookups run on the one engine, with other execution options)."""
        found = [self.write_engine, self.read_engine]
        if self._sqlite_lookup is not None:
            found.append(self._sqlite_lookup)
        return list({id(e): e for e in found}.values())

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        if self._write_lock is None:
            yield
        else:
            async with self._write_lock:
                yield

    @contextlib.asynccontextmanager
    async def write_session(self) -> AsyncIterator[AsyncSession]:
        """A session for a unit of work that writes. The caller commits (or it rolls back)."""
        async with self._locked():
            session = self._writer()
            try:
                yield session
            except BaseException:
                discard_after_commit(session)
                await session.rollback()
                raise
            finally:
                await session.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write unit of work that commits on success (jobs, CLI), then runs its
        after-commit callbacks."""
        async with self.write_session() as session:
            yield session
            await session.commit()
        await run_after_commit(session)

    @contextlib.asynccontextmanager
    async def read_session(self) -> AsyncIterator[AsyncSession]:
        session = self._reader()
        try:
            yield session
        finally:
            await session.close()

    @contextlib.asynccontextmanager
    async def lookup(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one short read that needs no unit of work (Core statements only):
        autocommit on PostgreSQL; on SQLite a connection that opens no transaction and runs
        its statements on the loop's thread (keep them short and indexed)."""
        if self._sqlite_lookup is None:
            async with self._lookup_engine.connect() as conn:
                yield conn
            return
        # Closed here rather than by AsyncConnection.__aexit__, which hands the close to a
        # shielded task: two more turns of the loop (several ms when it is busy) with the
        # connection still checked out, so the next lookups found the small pool empty and
        # waited. The inline connection's return to the pool never leaves this thread.
        conn = await self._lookup_engine.connect()
        try:
            yield conn
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def driver_connection(self) -> AsyncIterator[Any]:
        """PostgreSQL only: a pooled connection's own asyncpg connection, outside any
        SQLAlchemy transaction (each statement commits on its own unless the caller opens
        ``conn.transaction()``). For the few hot statements where SQLAlchemy's per-statement
        work costs more than the statement. asyncpg errors are raised as the SQLAlchemy
        exceptions the error table knows (a lost connection is also dropped from the pool)."""
        if self.is_sqlite:
            raise RuntimeError("driver_connection is PostgreSQL only")
        async with self.write_engine.connect() as conn:
            raw = await conn.get_raw_connection()
            try:
                yield raw.driver_connection
            except asyncpg.PostgresError as exc:
                raise _as_sqlalchemy_error(exc) from exc
            except (asyncpg.InterfaceError, OSError) as exc:
                await conn.invalidate(exc)
                raise OperationalError("driver statement", None, exc) from exc

    async def ping(self) -> None:
        async with self.read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self.checkpointer is not None:
            await self.checkpointer.drain()
        if self._sqlite_lookup is not None:
            await self._sqlite_lookup.dispose()
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()
