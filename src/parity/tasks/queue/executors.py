"""Where the queue's statements run: in a SQLAlchemy session (SQLite, and the general path on
PostgreSQL), or on a pooled connection's own asyncpg connection (the PostgreSQL fast path:
SQLAlchemy's per-statement work costs more CPU than these short statements). The driver runs
the very statements of ``queue.statements``, compiled once for the asyncpg dialect."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncSession

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

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        out = []
        for name in self.order:
            value = params[name] if name in params else self.defaults[name]
            proc = self.processors.get(name)
            out.append(proc(value) if proc is not None and value is not None else value)
        return out


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
    for stmt in (p.start, p.complete):
        compiled(stmt)
