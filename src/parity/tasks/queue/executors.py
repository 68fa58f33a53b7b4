"""Where the queue's statements run: in a SQLAlchemy session (the general path), on a pooled
connection's own asyncpg connection (the PostgreSQL fast path: SQLAlchemy's per-statement work
costs more CPU than these short statements), or, in an embedded server's write transaction, on
the SQLite connection itself (:class:`SqliteExecutor`). The drivers run the very statements of
``queue.statements``, compiled once per dialect, with SQLAlchemy's own bind and result
processors, so the values going in and coming out are the ones a session would give."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.dialects.sqlite import pysqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from parity.db import sqlite_driver
from parity.tasks.queue import statements as st


class RecordView:
    """Attribute access over an asyncpg record, as a SQLAlchemy row offers it."""

    __slots__ = ("_record",)

    def __init__(self, record: Any) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        try:
            return self._record[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self) -> Any:
        return iter(self._record.values())


class Executor(Protocol):
    statements: st.Statements
    session: AsyncSession | None  # None on the driver

    async def rows(self, stmt: Any, params: Mapping[str, Any]) -> list[Any]: ...

    async def execute(self, stmt: Any, params: Mapping[str, Any] | Sequence[Any]) -> None: ...


class SessionExecutor:
    def __init__(self, session: AsyncSession) -> None:
        self.session: AsyncSession | None = session
        self._session = session
        self.statements = st.for_dialect(session.get_bind().dialect.name)

    async def rows(self, stmt: Any, params: Mapping[str, Any]) -> list[Any]:
        return list((await self._session.execute(stmt, params)).all())

    async def execute(self, stmt: Any, params: Mapping[str, Any] | Sequence[Any]) -> None:
        await self._session.execute(stmt, params)


@dataclass(frozen=True)
class _Compiled:
    sql: str
    order: tuple[str, ...]
    defaults: dict[str, Any]
    processors: dict[str, Any]

    def _param(self, name: str, params: Mapping[str, Any]) -> Any:
        """The value bound to ``name``: given, or the literal SQLAlchemy bound at definition."""
        return params[name] if name in params else self.defaults[name]

    def _value(self, name: str, value: Any) -> Any:
        proc = self.processors.get(name)
        return proc(value) if proc is not None and value is not None else value

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [self._value(name, self._param(name, params)) for name in self.order]


_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]
_COMPILED: dict[int, _Compiled] = {}


def compiled(stmt: Any) -> _Compiled:
    """The statement as asyncpg runs it: SQL text, parameter order, the values SQLAlchemy
    bound at definition (literals), and the bind processors of typed parameters."""
    found = _COMPILED.get(id(stmt))
    if found is None:
        c = stmt.compile(dialect=_DIALECT)
        defaults = {k: v for k, v in c.construct_params(_check=False).items()}
        found = _COMPILED[id(stmt)] = _Compiled(
            str(c), tuple(c.positiontup or ()), defaults, dict(c._bind_processors)
        )
    return found


class DriverExecutor:
    statements = st.POSTGRES
    session: AsyncSession | None = None

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def rows(self, stmt: Any, params: Mapping[str, Any]) -> list[Any]:
        c = compiled(stmt)
        return [RecordView(r) for r in await self.conn.fetch(c.sql, *c.args(params))]

    async def execute(self, stmt: Any, params: Mapping[str, Any] | Sequence[Any]) -> None:
        raise RuntimeError("the driver path runs single statements only")


def warm() -> None:
    """Compile the fast path's statements now (at import of the hot path, not on a request)."""
    p = st.POSTGRES
    for stmt in (p.lock_runner, p.candidates, p.candidate_by_id, p.claim, p.claim_started):
        compiled(stmt)
    for stmt in (p.start, p.complete, st.ANY_FOR_RUNNER):
        compiled(stmt)


# -- SQLite: the write transaction's own connection ---------------------------------------------

_SQLITE_DIALECT = sqlite_dialect.dialect()
_EXPANDING = re.compile(r"\(__\[POSTCOMPILE_(\w+)\]\)")


class RowView:
    """A result row with attribute access by column name (as a SQLAlchemy row offers it)."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: tuple[Any, ...]) -> None:
        self._index = index
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[self._index[name]]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self) -> Any:
        return iter(self._values)

    def __getitem__(self, i: int) -> Any:
        return self._values[i]

    def __len__(self) -> int:
        return len(self._values)


@dataclass(frozen=True)
class _SqliteCompiled(_Compiled):
    expanding: frozenset[str]  # IN (...) parameters: one placeholder per list item
    index: dict[str, int]  # result column name -> position
    results: tuple[Any, ...]  # result processor per column (None: the value as it comes)

    def bound(self, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """The SQL and its positional arguments, expanding IN lists."""
        out: list[Any] = []
        lengths: dict[str, int] = {}
        for name in self.order:
            value = self._param(name, params)
            if name in self.expanding:
                items = list(value)
                lengths[name] = len(items)
                out += [self._value(name, v) for v in items]
            else:
                out.append(self._value(name, value))
        if not lengths:
            return self.sql, out

        def placeholders(m: re.Match[str]) -> str:
            n = lengths[m.group(1)]
            return "(" + ", ".join(["?"] * n) + ")" if n else "(NULL)"  # IN (NULL): no row

        return _EXPANDING.sub(placeholders, self.sql), out

    def row(self, raw: tuple[Any, ...]) -> RowView:
        values = tuple(
            proc(v) if proc is not None else v for proc, v in zip(self.results, raw, strict=True)
        )
        return RowView(self.index, values)


_SQLITE_COMPILED: dict[int, _SqliteCompiled] = {}


def sqlite_compiled(stmt: Any) -> _SqliteCompiled:
    """The statement as the sqlite3 module runs it, with the processors SQLAlchemy would
    apply to its parameters and to its result columns."""
    found = _SQLITE_COMPILED.get(id(stmt))
    if found is None:
        c = stmt.compile(dialect=_SQLITE_DIALECT)
        defaults = dict(c.construct_params(_check=False))
        expanding = frozenset(
            name for name, bind in c.binds.items() if getattr(bind, "expanding", False)
        )
        columns = list(getattr(c, "_result_columns", []) or [])
        index = {col[0]: i for i, col in enumerate(columns)}
        results = tuple(col[3]._cached_result_processor(_SQLITE_DIALECT, None) for col in columns)
        found = _SQLITE_COMPILED[id(stmt)] = _SqliteCompiled(
            str(c),
            tuple(c.positiontup or ()),
            defaults,
            dict(c._bind_processors),
            expanding,
            index,
            results,
        )
    return found


class SqliteExecutor:
    """The statements on the write transaction's SQLite connection, which runs on the loop's
    thread (``parity.db.sqlite_driver``): no SQLAlchemy statement machinery per statement.
    Anything the session holds unflushed is flushed first, as the session's autoflush would."""

    statements = st.SQLITE

    def __init__(self, session: AsyncSession, raw: Any) -> None:
        self.session: AsyncSession | None = session
        self._session = session
        self._raw = raw

    async def _flushed(self) -> None:
        s = self._session
        if s.new or s.deleted or s.dirty:
            await s.flush()

    async def rows(self, stmt: Any, params: Mapping[str, Any]) -> list[Any]:
        await self._flushed()
        c = sqlite_compiled(stmt)
        sql, args = c.bound(params)
        with _as_sqlalchemy_errors(sql, args):
            raw_rows = self._raw.execute(sql, args).fetchall()
        return [c.row(r) for r in raw_rows]

    async def execute(self, stmt: Any, params: Mapping[str, Any] | Sequence[Any]) -> None:
        await self._flushed()
        c = sqlite_compiled(stmt)
        if isinstance(params, Mapping):
            sql, args = c.bound(params)
            with _as_sqlalchemy_errors(sql, args):
                self._raw.execute(sql, args)
            return
        bound = [c.bound(p) for p in params]
        if bound:
            sql = bound[0][0]
            many = [args for _, args in bound]
            with _as_sqlalchemy_errors(sql, many):
                self._raw.executemany(sql, many)


@contextlib.contextmanager
def _as_sqlalchemy_errors(sql: str, args: Any) -> Iterator[None]:
    """A driver error as the SQLAlchemy exception a session would have raised (the error
    table maps those)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, args, exc, sqlite3.Error) from exc


async def executor_for(session: AsyncSession) -> Executor:
    """The fastest executor for this session's transaction: on SQLite's write connection the
    connection itself, otherwise the session."""
    found = session.info.get(_EXECUTOR)
    if found is not None:
        return found  # type: ignore[no-any-return]
    if session.get_bind().dialect.name != "sqlite":
        return SessionExecutor(session)
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    adapted = raw.dbapi_connection
    if not isinstance(adapted, sqlite_driver.InlineConnection):
        return SessionExecutor(session)  # a read connection: its statements hop threads
    x = SqliteExecutor(session, sqlite_driver.raw_connection(adapted))
    session.info[_EXECUTOR] = x  # the transaction's connection: the same until it ends
    return x


_EXECUTOR = "parity.sqlite_executor"
