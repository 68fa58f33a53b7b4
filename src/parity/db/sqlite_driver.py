"""SQLite through aiosqlite with one thread hop per statement.

aiosqlite runs every ``sqlite3`` call on its own thread; each call is a queue put, a thread
wake-up and a wake-up of the event loop back. SQLAlchemy's adapter makes four such calls per
statement (open a cursor, execute, fetch the rows, close the cursor). The cursor here does
the four in one call on aiosqlite's thread and keeps what SQLAlchemy reads afterwards
(rows, ``description``, ``rowcount``, ``lastrowid``), so a statement costs one hop. Plugged in
as the engine's DBAPI module (``create_async_engine(..., module=dbapi())``), SQLAlchemy's
documented hook for an alternate DBAPI; everything else is SQLAlchemy's aiosqlite dialect.

The write engine's one connection goes further (``dbapi(inline_busy_s=...)``): its
statements, commits and rollbacks run on the event loop's own thread, with no hop at all.
Writes are serialized by the database's write lock, so a write transaction that waits for a
hop holds that lock while the loop serves other requests before it resumes the holder:
measured over FL rounds, a hop took 0.21 ms at the median and 6.9 ms at p99 against
0.03 / 1.5 ms for the statement itself, and the write lock was busy the whole time. SQLite
never sleeps on the loop: the write connection has a busy timeout of 0 and a statement refused
as busy (another process holds the database's write lock: a CLI command, a migration) is tried
again after an asyncio sleep, until the busy timeout has passed.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

_Result = tuple[list[Any], Any, int, int | None]
SQLITE_BUSY = 5
BUSY_RETRY_FIRST_S = 0.001
BUSY_RETRY_MAX_S = 0.05


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Result:
    """On aiosqlite's thread: the whole statement, its rows and what is read about it."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, () if parameters is None else parameters)
        rows = cursor.fetchall() if cursor.description else []
        return rows, cursor.description, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose statement runs in one call on the connection's thread."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        # No driver cursor is opened here: each statement opens and closes its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._rows: collections.deque[Any] = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    async def _run(self, operation: Any, parameters: Any, many: bool) -> None:
        async with self._adapt_connection._execute_mutex:
            conn = self._connection
            rows, self._description, self._rowcount, self._lastrowid = await conn._execute(
                _run, conn._conn, operation, parameters, many
            )
            self._rows = collections.deque(rows)

    def execute(self, operation: Any, parameters: Any = None) -> None:
        try:
            await_(self._run(operation, parameters, False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Sequence[Any]) -> None:
        try:
            await_(self._run(operation, seq_of_parameters, True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _async_soft_close(self) -> None:
        return None  # nothing is open on the driver between calls

    def close(self) -> None:
        self._rows.clear()


def is_busy(error: BaseException) -> bool:
    """SQLITE_BUSY or one of its extended codes: the database's lock is held elsewhere."""
    code = getattr(error, "sqlite_errorcode", None)
    return (
        isinstance(error, sqlite3.OperationalError)
        and code is not None
        and code & 0xFF == SQLITE_BUSY
    )


def run_until_not_busy(call: Any, busy_s: float) -> Any:
    """``call()`` on the loop's thread; while SQLite answers busy, sleep (asyncio, doubling up
    to 50 ms) and try again until ``busy_s`` has passed, then raise the busy error."""
    deadline: float | None = None
    pause = BUSY_RETRY_FIRST_S
    while True:
        try:
            return call()
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise
            now = time.monotonic()
            deadline = now + busy_s if deadline is None else deadline
            if now >= deadline:
                raise
            await_(asyncio.sleep(min(pause, deadline - now)))
            pause = min(pause * 2, BUSY_RETRY_MAX_S)


async def _no_wait() -> None:
    """An awaitable that completes without suspending (see :meth:`InlineCursor._inline`)."""


class InlineCursor(OneHopCursor):
    """A cursor whose statement runs on the calling (event loop) thread."""

    __slots__ = ()

    def _inline(self, operation: Any, parameters: Any, many: bool) -> None:
        conn = self._adapt_connection
        assert isinstance(conn, InlineConnection)
        raw = self._connection._conn
        rows, self._description, self._rowcount, self._lastrowid = run_until_not_busy(
            lambda: _run(raw, operation, parameters, many), conn.busy_s
        )
        self._rows = collections.deque(rows)
        # SQLAlchemy's AsyncConnection.execute insists that a statement awaited something;
        # this await returns at once, without handing the loop to anyone else.
        await_(_no_wait())

    def execute(self, operation: Any, parameters: Any = None) -> None:
        try:
            self._inline(operation, parameters, False)
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Sequence[Any]) -> None:
        try:
            self._inline(operation, seq_of_parameters, True)
        except Exception as error:
            self._adapt_connection._handle_exception(error)


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHopCursor


class InlineConnection(OneHopConnection):
    """The write connection: statements, commit and rollback on the loop's thread (the
    connection is opened with ``check_same_thread=False``; aiosqlite's thread still opens and
    closes it, never at the same time)."""

    __slots__ = ("busy_s",)
    _cursor_cls = InlineCursor

    def __init__(self, dbapi: Any, connection: Any, busy_s: float) -> None:
        super().__init__(dbapi, connection)
        self.busy_s = busy_s

    def _end(self, how: str) -> None:
        raw = self._connection._connection  # None once closed
        if raw is None:
            return
        try:
            run_until_not_busy(getattr(raw, how), self.busy_s)
        except Exception as error:
            self._handle_exception(error)

    def commit(self) -> None:
        self._end("commit")

    def rollback(self) -> None:
        self._end("rollback")


def raw_connection(conn: InlineConnection) -> sqlite3.Connection:
    """The sqlite3 connection under an inline connection, for statements run directly on it
    (they run in the connection's current transaction, on the loop's thread)."""
    raw: sqlite3.Connection = conn._connection._conn
    return raw


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI shim whose connections hand out :class:`OneHopCursor`
    (or, with ``inline_busy_s`` set, are :class:`InlineConnection`)."""

    def __init__(self, aiosqlite: Any, sqlite: Any, inline_busy_s: float | None = None) -> None:
        super().__init__(aiosqlite, sqlite)
        self.inline_busy_s = inline_busy_s

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        if self.inline_busy_s is not None:
            kw["check_same_thread"] = False
        adapted = super().connect(*arg, **kw)
        if self.inline_busy_s is not None:
            return InlineConnection(self, adapted._connection, self.inline_busy_s)
        return OneHopConnection(self, adapted._connection)


def dbapi(*, inline_busy_s: float | None = None) -> OneHopDBAPI:
    """The DBAPI module: statements on aiosqlite's thread, or on the loop's thread with
    ``inline_busy_s`` (how long a busy database is waited for, in asyncio sleeps)."""
    return OneHopDBAPI(aiosqlite, sqlite3, inline_busy_s)
