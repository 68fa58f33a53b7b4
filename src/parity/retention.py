"""Retention: prune expired nonces, old tokens, idempotency records, events and finished
webhook deliveries past EVENTS_RETENTION_DAYS, and the logs of tasks finished more than
TASK_LOG_RETENTION_DAYS ago. Ledger and settlement rows are never pruned (no ledger table is
touched here).

The rows go in bounded batches, so that a large backlog (a server that was down for a while, a
retention setting just lowered) never holds SQLite's one write lock, or a PostgreSQL
transaction, for long: every DELETE removes at most ``batch_size`` rows, picked by primary key
through an indexed condition (``DELETE ... WHERE pk IN (SELECT pk ... LIMIT n)``), and one pass
(one tick of the job: one short write transaction) stops, between two statements, once it has
removed ``pass_rows`` rows. A pass that stopped there wakes the job, so the next pass starts at
once, in a transaction of its own, and carries on from the kind of row it stopped at; in
between, the write lock goes to whoever waits for it. What is deleted is what one statement per kind
deleted: the same conditions, applied batch by batch until none is left."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Delete, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from parity.auth.models import AuthNonce, AuthToken
from parity.db.hooks import after_commit
from parity.events.models import Event, WebhookDelivery, WebhookDeliveryAttempt
from parity.events.repository import DELIVERED, FAILED
from parity.idempotency.models import IdempotencyRecord
from parity.jobs.runner import PeriodicJob
from parity.tasks import service as tasks_service

# At most this many rows per DELETE, and by default per pass: a batch of finished deliveries
# took about 35 ms to delete on SQLite (SQLite runs the write connection's statements on the
# event loop's thread, so a statement stalls the whole process while it runs). At most
# MAX_BATCH_SIZE: a batch of deliveries is bound as that many parameters, and PostgreSQL takes
# at most 32,767 per statement.
BATCH_SIZE = 1_000
MAX_BATCH_SIZE = 30_000
# Tokens that expired or were revoked this long ago go (expired nonces go at once).
TOKEN_GRACE = timedelta(days=7)
_FINISHED_DELIVERIES = [DELIVERED, FAILED]


@dataclass(frozen=True)
class Cutoffs:
    """What is old enough to go, as of one pass."""

    now: datetime  # nonces and idempotency records that expired before it
    tokens_before: datetime  # tokens that expired or were revoked before it
    task_logs_before: datetime  # logs of tasks that ended before it
    events_before: datetime  # events, and finished deliveries, created before it

    @classmethod
    def at(
        cls, now: datetime, events_retention_days: float, task_log_retention_days: float
    ) -> Cutoffs:
        return cls(
            now=now,
            tokens_before=now - TOKEN_GRACE,
            task_logs_before=now - timedelta(days=task_log_retention_days),
            events_before=now - timedelta(days=events_retention_days),
        )


@dataclass
class _Budget:
    """Rows one pass may still remove (deleted rows of every table, attempts included)."""

    batch_size: int
    left: int

    def spend(self, rows: int) -> None:
        self.left -= rows

    @property
    def used(self) -> bool:
        return self.left <= 0


@dataclass(frozen=True)
class PrunePass:
    """What one pass did. ``deleted`` counts nonces, tokens, idempotency records, log chunks,
    deliveries and events (not the attempts of deliveries, nor rows removed by a cascade).
    ``resume_at`` is the kind of row the next pass starts from (an index into ``KINDS``), or
    None when nothing old enough was left."""

    deleted: int
    resume_at: int | None

    @property
    def complete(self) -> bool:
        return self.resume_at is None


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def _delete(session: AsyncSession, statement: Delete) -> int:
    return _rowcount(await session.execute(statement.execution_options(synchronize_session=False)))


# One step of one kind: at most ``budget.batch_size`` rows per statement, the rows it removed
# spent from the budget. Returns the rows it counts and whether the kind has nothing left.
Step = Callable[[AsyncSession, Cutoffs, _Budget], Awaitable[tuple[int, bool]]]


async def _batch(
    session: AsyncSession, budget: _Budget, table: Any, key: Any, *where: Any
) -> tuple[int, bool]:
    """Delete at most a batch of ``table``'s rows matching ``where`` (conditions on the aliased
    ``key`` column's table), picked by ``key``."""
    pick = select(key).where(*where).limit(budget.batch_size)
    n = await _delete(session, delete(table).where(getattr(table, key.key).in_(pick)))
    budget.spend(n)
    return n, n < budget.batch_size


async def _nonces(session: AsyncSession, cut: Cutoffs, budget: _Budget) -> tuple[int, bool]:
    n_ = aliased(AuthNonce)
    return await _batch(session, budget, AuthNonce, n_.id, n_.expires_at < cut.now)


async def _tokens(session: AsyncSession, cut: Cutoffs, budget: _Budget) -> tuple[int, bool]:
    t = aliased(AuthToken)
    old = or_(t.expires_at < cut.tokens_before, t.revoked_at < cut.tokens_before)
    return await _batch(session, budget, AuthToken, t.id, old)


async def _idempotency(session: AsyncSession, cut: Cutoffs, budget: _Budget) -> tuple[int, bool]:
    r = aliased(IdempotencyRecord)
    return await _batch(session, budget, IdempotencyRecord, r.id, r.expires_at < cut.now)


async def _task_logs(session: AsyncSession, cut: Cutoffs, budget: _Budget) -> tuple[int, bool]:
    """Log chunks of tasks that ended before the cut-off (the task domain's own statement:
    logs of tasks still open are kept whatever their age)."""
    n = await tasks_service.prune_finished_logs(session, cut.task_logs_before, budget.batch_size)
    budget.spend(n)
    return n, n < budget.batch_size


async def _deliveries(session: AsyncSession, cut: Cutoffs, budget: _Budget) -> tuple[int, bool]:
    """Finished (delivered or failed) deliveries created before the cut-off, with their
    attempts: a batch of deliveries is picked, its attempts go (a batch at a time), then the
    deliveries. A pass whose budget runs out among the attempts leaves those deliveries to a
    later pass (as a rule the next one picks the same: no ORDER BY, which would sort every
    finished delivery on each batch)."""
    d = aliased(WebhookDelivery)
    ids = list(
        (
            await session.scalars(
                select(d.id)
                .where(d.status.in_(_FINISHED_DELIVERIES), d.created_at < cut.events_before)
                .limit(budget.batch_size)
            )
        ).all()
    )
    if not ids:
        return 0, True
    a = aliased(WebhookDeliveryAttempt)
    while True:
        pick = select(a.id).where(a.delivery_id.in_(ids)).limit(budget.batch_size)
        n = await _delete(
            session, delete(WebhookDeliveryAttempt).where(WebhookDeliveryAttempt.id.in_(pick))
        )
        budget.spend(n)
        if n < budget.batch_size:
            break
        if budget.used:
            return 0, False
    n = await _delete(session, delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
    budget.spend(n)
    return n, len(ids) < budget.batch_size


async def _events(session: AsyncSession, cut: Cutoffs, budget: _Budget) -> tuple[int, bool]:
    """Events created before the cut-off. An event's remaining deliveries (pending ones, or
    finished ones newer than the cut-off) and their attempts go with it (ON DELETE CASCADE)."""
    e = aliased(Event)
    return await _batch(session, budget, Event, e.seq, e.created_at < cut.events_before)


# In this order: a delivery's attempts before it, finished deliveries before their events.
KINDS: tuple[tuple[str, Step], ...] = (
    ("auth_nonces", _nonces),
    ("auth_tokens", _tokens),
    ("idempotency_keys", _idempotency),
    ("task_logs", _task_logs),
    ("webhook_deliveries", _deliveries),
    ("events", _events),
)


def _check_sizes(batch_size: int, pass_rows: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, not {batch_size}")
    if pass_rows < 1:
        raise ValueError(f"pass_rows must be at least 1, not {pass_rows}")


async def prune_once(
    session: AsyncSession,
    now: datetime,
    *,
    events_retention_days: float = 30.0,
    task_log_retention_days: float = 30.0,
    batch_size: int = BATCH_SIZE,
    pass_rows: int | None = None,
    resume_at: int = 0,
) -> PrunePass:
    """One pass in ``session``'s transaction: each kind of row from ``resume_at`` on, a batch
    at a time, until every kind is done or ``pass_rows`` rows (``batch_size`` by default) or
    more were removed. The caller commits."""
    budget = _Budget(batch_size, batch_size if pass_rows is None else pass_rows)
    _check_sizes(budget.batch_size, budget.left)
    if not 0 <= resume_at < len(KINDS):
        raise ValueError(f"resume_at must be between 0 and {len(KINDS) - 1}, not {resume_at}")
    cut = Cutoffs.at(now, events_retention_days, task_log_retention_days)
    deleted = 0
    for index in range(resume_at, len(KINDS)):
        _, step = KINDS[index]
        done = False
        while not done:
            if budget.used:
                return PrunePass(deleted, index)
            n, done = await step(session, cut, budget)
            deleted += n
            await asyncio.sleep(0)  # other tasks run between two statements
    return PrunePass(deleted, None)


def retention_job(
    interval_seconds: float,
    events_retention_days: float = 30.0,
    task_log_retention_days: float = 30.0,
    *,
    batch_size: int = BATCH_SIZE,
    pass_rows: int | None = None,
) -> PeriodicJob:
    """Every ``interval_seconds``, a pass (one tick, one transaction); a pass that used its
    budget with rows left wakes the job, so the next pass follows at once."""
    rows = batch_size if pass_rows is None else pass_rows
    _check_sizes(batch_size, rows)
    wake = asyncio.Event()
    state = {"resume_at": 0}

    async def tick(session: AsyncSession, now: datetime) -> int:
        done = await prune_once(
            session,
            now,
            events_retention_days=events_retention_days,
            task_log_retention_days=task_log_retention_days,
            batch_size=batch_size,
            pass_rows=rows,
            resume_at=state["resume_at"],
        )

        def committed() -> None:
            # Only once committed: a pass rolled back leaves the next one to start where it did.
            state["resume_at"] = done.resume_at or 0
            if not done.complete:
                wake.set()

        after_commit(session, committed)
        return done.deleted

    return PeriodicJob("retention", interval_seconds, tick, wake=wake)
