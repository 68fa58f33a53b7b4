"""Claim, start and complete as the runner API calls them: each its own unit of work.

On PostgreSQL the common case runs on the driver (``queue.executors.DriverExecutor`` running
``queue.ops`` over the statements of ``queue.statements``): a claim of the next task, a
start or a completion under the runner's current claim. Everything else (SQLite, a repeat with
the same token, a stale or foreign claim to explain, priced work whose escrow must close in
the completion's transaction) goes through ``claims`` or ``lifecycle`` in a SQLAlchemy unit of
work, exactly as before. Both commit before the caller answers; wake-ups happen after the commit.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from parity.core.tokens import hash_token
from parity.db.session import Database
from parity.logging import get_logger
from parity.tasks import billing, claims, lifecycle, service
from parity.tasks.deps import TaskDeps
from parity.tasks.lifecycle import Report
from parity.tasks.queue import ops
from parity.tasks.queue import statements as st
from parity.tasks.queue.executors import DriverExecutor, compiled, warm
from parity.tasks.queue.ops import Claim, Refusal

log = get_logger("parity.tasks")
TaskLike = Any  # a Task, a Core row or a RecordView: the same attribute names
warm()


async def claim_next(
    db: Database,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    *,
    max_tasks: int,
    start: bool,
    likely: bool = True,
) -> Claim | None:
    """The next task(s) this runner may claim, or None when there is nothing for it now.

    A claim is a write transaction (on SQLite serialized with every other write; on
    PostgreSQL four round trips and a lock on the runner's row); unless work is ``likely``
    (the caller was just woken for it), one read first asks whether any task is there for
    this runner at all (a superset of what the claim takes) and answers None without a
    write when not: a runner long-polling right after its last result."""
    if not likely and not await _any_for_runner(db, deps, runner_id):
        return None
    if not db.is_sqlite:
        got = await _claim_on_driver(db, deps, runner_id, max_tasks, start, None)
        if isinstance(got, Claim):
            return got
        if got is not Refusal.UNKNOWN_RUNNER:
            return None
    async with db.transaction() as session:
        return await claims.claim(session, deps, runner_id, max_tasks=max_tasks, start=start)


async def _any_for_runner(db: Database, deps: TaskDeps, runner_id: uuid.UUID) -> bool:
    params = {"b_runner_id": runner_id, "b_now": deps.clock.now()}
    if db.is_sqlite:
        async with db.lookup() as conn:
            return bool((await conn.execute(st.ANY_FOR_RUNNER, params)).scalar())
    c = compiled(st.ANY_FOR_RUNNER)
    async with db.driver_connection() as driver:
        return bool(await driver.fetchval(c.sql, *c.args(params)))


async def claim_task(
    db: Database, deps: TaskDeps, runner_id: uuid.UUID, task_id: uuid.UUID, *, start: bool
) -> Claim:
    """Claim one named task (after a push offer), or raise why it cannot be claimed."""
    if not db.is_sqlite:
        got = await _claim_on_driver(db, deps, runner_id, 1, start, task_id)
        if isinstance(got, Claim):
            return got
    # SQLite, or a refusal to explain (the general path raises the precise error).
    async with db.transaction() as session:
        named = await claims.claim(session, deps, runner_id, start=start, task_id=task_id)
    assert named is not None  # a named claim raises rather than answering nothing
    return named


async def _claim_on_driver(
    db: Database,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    max_tasks: int,
    start: bool,
    task_id: uuid.UUID | None,
) -> Claim | Refusal:
    """``queue.ops.claim`` in one driver transaction. A refusal of a named task or of an
    unknown runner is explained by the general path (it raises the precise error)."""
    async with db.driver_connection() as conn, conn.transaction():
        return await ops.claim(
            DriverExecutor(conn), deps, runner_id, max_tasks=max_tasks, start=start, task_id=task_id
        )


async def start_task(
    db: Database, deps: TaskDeps, runner_id: uuid.UUID, task_id: uuid.UUID, token: str
) -> TaskLike:
    if not db.is_sqlite:
        async with db.driver_connection() as conn:
            row = await ops.start_held(
                DriverExecutor(conn), task_id, runner_id, hash_token(token), deps.clock.now()
            )
        if row is not None:
            return row
    async with db.transaction() as session:
        return await lifecycle.start(session, deps, runner_id, task_id, token)


async def complete_task(
    db: Database,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    task_id: uuid.UUID,
    token: str,
    report: Report,
) -> TaskLike:
    """Accept the one completion of a task; then offer a due task again if a slot freed."""
    # Escrow closes in the completion's transaction, in the ledger's terms: general path.
    if not db.is_sqlite and billing.escrow_ledger(deps) is None:
        done = await _complete_on_driver(db, deps, runner_id, task_id, token, report)
        if done is not None:
            return done
    async with db.transaction() as session:
        task = await lifecycle.complete(session, deps, runner_id, task_id, token, report)
        now = deps.clock.now()
        if await lifecycle.slot_freed(session, deps, now):
            await service.reoffer_pending(session, deps, now, limit=1)
    return task


async def _complete_on_driver(
    db: Database,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    task_id: uuid.UUID,
    token: str,
    report: Report,
) -> TaskLike | None:
    now = deps.clock.now()
    async with db.driver_connection() as conn:
        done = await ops.complete_held(
            DriverExecutor(conn),
            task_id,
            runner_id,
            hash_token(token),
            now,
            report.result_fields(deps.output_inline_max_bytes),
            deps.events.admins_sorted,
        )
    if done is None:
        return None
    # Committed: wake the creator's event readers (and the delivery loop when webhooks were
    # queued), then let a freed slot place a due task.
    deps.events.hub.publish(
        [done.task.creator_address.lower()],
        deliveries=done.deliveries > 0,
        resources=(str(done.task.id),),
    )
    if done.due:
        if done.push:
            await _reoffer_after(db, deps, now)
        else:
            deps.wakeups.wake_any(1)
    return done.task


async def _reoffer_after(db: Database, deps: TaskDeps, now: datetime) -> None:
    """Offer a due task after a committed completion. Best effort: the completion is already
    accepted, so a failure here must not turn its answer into an error (the scheduler's tick
    offers the task anyway)."""
    try:
        async with db.transaction() as session:
            await service.reoffer_pending(session, deps, now, limit=1)
    except Exception as exc:
        log.warning("reoffer_after_completion_failed", error=type(exc).__name__, detail=str(exc))
