"""Retention deletes a backlog in bounded batches, one short transaction a pass, and deletes
exactly what one statement per kind of row deleted: the same rows go, the same rows stay."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, event, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from parity.auth.models import Account, AuthNonce, AuthToken
from parity.clock import FrozenClock
from parity.container import Container
from parity.core.tasks.states import TERMINAL
from parity.events.models import Event, WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint
from parity.idempotency.models import IdempotencyRecord
from parity.jobs.runner import JobRunner, TickOutcome
from parity.retention import retention_job
from parity.tasks.models import Task, TaskLog
from tests.conftest import ALICE, until

DAY = timedelta(days=1)
BATCH = 4  # every kind below has several batches' worth of rows to delete
TABLES: dict[str, Any] = {
    "auth_nonces": AuthNonce.id,
    "auth_tokens": AuthToken.id,
    "idempotency_keys": IdempotencyRecord.id,
    "tasks": Task.id,
    "task_logs": TaskLog.id,
    "events": Event.id,
    "webhook_deliveries": WebhookDelivery.id,
    "webhook_delivery_attempts": WebhookDeliveryAttempt.id,
}


class Kept:
    """Ids of rows retention must keep, by table."""

    def __init__(self) -> None:
        self.ids: dict[str, set[uuid.UUID]] = {name: set() for name in TABLES}


def _task(now: datetime, status: str, completed_at: datetime | None) -> Task:
    return Task(
        id=uuid.uuid4(),
        title="t",
        description="",
        type="command",
        status=status,
        config={"command": "true"},
        environment=None,
        creator_address=ALICE.address,
        nonce=uuid.uuid4().hex,
        available_at=now - 60 * DAY,
        completed_at=completed_at,
        created_at=now - 60 * DAY,
        updated_at=now - 60 * DAY,
    )


async def _seed(session: AsyncSession, now: datetime) -> Kept:
    """A backlog of every kind of row retention prunes, mixed with rows it must keep."""
    kept = Kept()
    old = now - 40 * DAY  # past the 30-day retention of events and task logs
    recent = now - 2 * DAY
    session.add(Account(address=ALICE.address, created_at=old, last_login_at=None))
    await session.flush()

    def add(row: Any, keep: bool) -> Any:
        session.add(row)
        if keep:
            kept.ids[str(row.__tablename__)].add(row.id)
        return row

    for i in range(14):  # expired nonces go; open ones stay
        expires = now - (i + 1) * 60 * 1e-3 * DAY if i < 11 else now + DAY
        add(
            AuthNonce(
                id=uuid.uuid4(),
                address=ALICE.address,
                nonce=uuid.uuid4().hex,
                message="m",
                issued_at=now - 2 * DAY,
                expires_at=expires,
            ),
            keep=expires >= now,
        )
    token_cases = (
        [(now - 8 * DAY, None, False)] * 6  # expired more than 7 days ago
        + [(None, now - 9 * DAY, False)] * 5  # revoked more than 7 days ago
        + [(now - 2 * DAY, None, True)] * 2  # expired, still within the grace
        + [(None, now - DAY, True)]  # revoked, still within the grace
        + [(None, None, True)] * 2  # a live API key
        + [(now + DAY, now - 8 * DAY, False)]  # not expired, but revoked long ago
    )
    for expires_at, revoked_at, keep in token_cases:
        add(
            AuthToken(
                id=uuid.uuid4(),
                kind="session",
                token_hash=uuid.uuid4().hex,
                display_prefix="p",
                address=ALICE.address,
                name=None,
                runner_id=None,
                created_at=now - 20 * DAY,
                expires_at=expires_at,
                revoked_at=revoked_at,
            ),
            keep=keep,
        )
    for i in range(12):  # expired idempotency records go
        keep = i >= 9
        add(
            IdempotencyRecord(
                id=uuid.uuid4(),
                identity=f"id{i}",
                key=f"k{i}",
                method="POST",
                path="/api/v1/tasks",
                request_hash="h",
                status_code=201,
                response_body="{}",
                created_at=now - 2 * DAY,
                expires_at=now + DAY if keep else now - DAY,
            ),
            keep=keep,
        )

    # Task logs: those of tasks that ended before the cut-off go; the tasks themselves stay,
    # and so do the logs of open tasks (however old) and of tasks that ended recently.
    task_cases = (
        [("completed", old, False)] * 3
        + [("failed", old, False), ("cancelled", old, False)]
        + [("completed", recent, True)]
        + [("running", None, True), ("pending", None, True)]
        + [("running", old, True)]  # completed_at set on a task that is not finished
    )
    for status, completed_at, keep in task_cases:
        task = add(_task(now, status, completed_at), keep=True)
        await session.flush()
        for seq in range(3):
            add(
                TaskLog(
                    id=uuid.uuid4(),
                    task_id=task.id,
                    attempt=1,
                    seq=seq,
                    lines=["x"],
                    truncated=False,
                    created_at=old,
                ),
                keep=keep,
            )

    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        owner_address=ALICE.address,
        url="https://hooks.example/x",
        description=None,
        secret="s",
        previous_secret=None,
        previous_secret_expires_at=None,
        event_types=["task.created"],
        enabled=True,
        disabled_reason=None,
        disabled_at=None,
        consecutive_failures=0,
        failing_since=None,
        next_attempt_at=None,
        created_at=old - DAY,
        updated_at=old - DAY,
    )
    session.add(endpoint)
    await session.flush()

    def emit(created_at: datetime, keep: bool) -> Event:
        ev: Event = add(
            Event(
                id=uuid.uuid4(),
                type="task.created",
                owner_address=ALICE.address,
                resource_id=None,
                data={},
                created_at=created_at,
            ),
            keep=keep,
        )
        return ev

    async def deliver(
        ev: Event, status: str, created_at: datetime, attempts: int, keep: bool
    ) -> None:
        d = add(
            WebhookDelivery(
                id=uuid.uuid4(),
                endpoint_id=endpoint.id,
                event_id=ev.id,
                status=status,
                attempts=attempts,
                next_attempt_at=created_at,
                last_status_code=None,
                last_error=None,
                delivered_at=None,
                created_at=created_at,
            ),
            keep=keep,
        )
        await session.flush()
        for n in range(attempts):
            add(
                WebhookDeliveryAttempt(
                    id=uuid.uuid4(),
                    delivery_id=d.id,
                    attempt=n + 1,
                    status_code=500,
                    error=None,
                    duration_ms=1,
                    created_at=created_at,
                ),
                keep=keep,
            )

    for i in range(10):  # old events, each with one finished delivery (attempts: 1 to 6)
        ev = emit(old - i * 60 * 1e-3 * DAY, keep=False)
        await session.flush()
        await deliver(ev, "delivered" if i % 2 else "failed", ev.created_at, 1 + i % 6, False)
    ev = emit(old, keep=False)  # an old event still pending: it goes, its delivery with it
    await session.flush()
    await deliver(ev, "pending", old, 2, keep=False)
    await deliver(ev, "delivered", recent, 1, keep=False)  # recent, but its event goes
    for _ in range(2):  # recent events stay, with their deliveries
        ev = emit(recent, keep=True)
        await session.flush()
        await deliver(ev, "delivered", recent, 2, keep=True)
        await deliver(ev, "pending", old, 3, keep=True)  # old, but not finished
        await deliver(ev, "failed", old, 2, keep=False)  # old and finished: it goes
    await session.flush()
    return kept


async def _left(session: AsyncSession) -> dict[str, set[uuid.UUID]]:
    return {name: set((await session.scalars(select(col))).all()) for name, col in TABLES.items()}


async def _single_statement_prune(session: AsyncSession, now: datetime) -> int:
    """The oracle: what retention deleted with one statement per kind of row, written out
    here independently of the batched code."""
    events_before, tokens_before = now - 30 * DAY, now - 7 * DAY
    finished_task = (
        select(1)
        .where(
            Task.id == TaskLog.task_id,
            Task.status.in_([s.value for s in TERMINAL]),
            Task.completed_at < now - 30 * DAY,
        )
        .correlate(TaskLog)
    )
    old_deliveries = (
        WebhookDelivery.status.in_(["delivered", "failed"]),
        WebhookDelivery.created_at < events_before,
    )
    statements = [
        delete(AuthNonce).where(AuthNonce.expires_at < now),
        delete(AuthToken).where(
            or_(AuthToken.expires_at < tokens_before, AuthToken.revoked_at < tokens_before)
        ),
        delete(IdempotencyRecord).where(IdempotencyRecord.expires_at < now),
        delete(TaskLog).where(exists(finished_task)),
    ]
    n = 0
    for statement in statements:
        n += (await session.execute(statement)).rowcount  # type: ignore[attr-defined]
    await session.execute(
        delete(WebhookDeliveryAttempt)
        .where(
            WebhookDeliveryAttempt.delivery_id.in_(
                select(WebhookDelivery.id).where(*old_deliveries)
            )
        )
        .execution_options(synchronize_session=False)
    )
    for statement in (
        delete(WebhookDelivery).where(*old_deliveries),
        delete(Event).where(Event.created_at < events_before),
    ):
        result = await session.execute(statement.execution_options(synchronize_session=False))
        n += result.rowcount  # type: ignore[attr-defined]
    return n


@contextmanager
def _deletes(container: Container) -> Iterator[list[tuple[str, int]]]:
    """(table, rows) of every DELETE run while inside."""
    seen: list[tuple[str, int]] = []
    engine = container.db.write_engine.sync_engine

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split()
        if words[:2] == ["DELETE", "FROM"]:
            seen.append((words[2].strip('"'), int(cursor.rowcount)))

    event.listen(engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(engine, "after_cursor_execute", after)


async def test_a_backlog_goes_in_bounded_batches_with_the_same_result_as_one_statement(
    container: Container, clock: FrozenClock
) -> None:
    now = clock.now()
    async with container.db.write_session() as s:
        kept = await _seed(s, now)
        await s.commit()
        before = await _left(s)
        # What one statement per kind deleted, then undone.
        expected_count = await _single_statement_prune(s, now)
        expected = await _left(s)
        await s.rollback()
    assert expected == kept.ids  # the seed marks exactly what is to stay
    assert {k: len(v) for k, v in before.items()} != {k: len(v) for k, v in expected.items()}

    job = retention_job(60, 30, 30, batch_size=BATCH)
    runner = JobRunner(container.db, clock, [job])
    counts: list[int] = []
    wake = job.wake
    assert wake is not None
    with _deletes(container) as seen:
        for _ in range(100):
            wake.clear()
            res = await runner.run_tick(job)
            assert res.outcome is TickOutcome.RAN
            counts.append(res.items)
            if not wake.is_set():  # nothing old enough left
                break
    async with container.db.read_session() as s:
        assert await _left(s) == expected
    assert sum(counts) == expected_count
    assert len(counts) > 10  # many passes (transactions), each a bounded part of the backlog
    assert max(counts) <= 2 * BATCH
    assert seen and max(rows for _, rows in seen) <= BATCH
    by_table = {t for t, rows in seen if rows == BATCH}
    assert {
        "auth_nonces",
        "auth_tokens",
        "idempotency_keys",
        "task_logs",
        "webhook_delivery_attempts",
        "webhook_deliveries",
        "events",
    } <= by_table  # every kind took more than one batch

    # A pass with nothing to do deletes nothing and does not wake the job.
    wake.clear()
    res = await runner.run_tick(job)
    assert res.items == 0 and not wake.is_set()


async def test_the_running_job_continues_at_once_until_the_backlog_is_gone(
    container: Container, clock: FrozenClock
) -> None:
    now = clock.now()
    async with container.db.write_session() as s:
        kept = await _seed(s, now)
        await s.commit()
    # An hour between passes: only the wake-up of a pass that used its budget brings the
    # next one on within the test.
    job = retention_job(3600, 30, 30, batch_size=BATCH)
    runner = JobRunner(container.db, clock, [job], random=lambda: 0.5)

    async def pruned() -> bool:
        async with container.db.read_session() as s:
            return await _left(s) == kept.ids

    runner.start()
    try:
        await until(pruned)
        await until(lambda: job.wake is not None and not job.wake.is_set())
    finally:
        await runner.stop(timeout=5)
    assert runner.ticks["retention"] > 10


async def test_a_pass_rolled_back_is_done_again(container: Container, clock: FrozenClock) -> None:
    now = clock.now()
    async with container.db.write_session() as s:
        kept = await _seed(s, now)
        await s.commit()
    job = retention_job(60, 30, 30, batch_size=BATCH, pass_rows=3 * BATCH)
    runner = JobRunner(container.db, clock, [job])
    await runner.run_tick(job)  # the nonces done, it stopped among the tokens
    with _deletes(container) as seen:
        async with container.db.write_session() as s:
            await job.tick(s, now)
            await s.rollback()  # this pass never happened
    # It had finished the tokens and stopped among the idempotency records: the next pass
    # must still start at the tokens.
    assert [t for t, _ in seen] == ["auth_tokens"] * 3 + ["idempotency_keys"]
    assert job.wake is not None
    for _ in range(100):
        job.wake.clear()
        await runner.run_tick(job)
        if not job.wake.is_set():
            break
    async with container.db.read_session() as s:
        assert await _left(s) == kept.ids
