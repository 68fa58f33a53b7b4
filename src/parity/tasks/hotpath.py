"""Claim, start and complete as the runner API calls them: each its own unit of work.

On PostgreSQL the common case runs on the driver (``pg_queue``): a claim of the next task, a
start or a completion under the runner's current claim. Everything else (SQLite, a repeat with
the same token, a stale or foreign claim to explain, priced work whose escrow must close in
the completion's transaction) goes through ``claims`` or ``lifecycle`` in a SQLAlchemy unit of
work, exactly as before. Both commit before the caller answers; wake-ups happen after the commit.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from parity.core.identity.siwe import hash_token
from parity.db.session import Database
from parity.logging import get_logger
from parity.tasks import billing, claims, lifecycle, pg_queue, service
from parity.tasks import claim_repository as claim_repo
from parity.tasks.claims import Claim
from parity.tasks.deps import TaskDeps
from parity.tasks.lifecycle import Report

log = get_logger("parity.tasks")
TaskLike = Any  # a Task, a Core row or a pg_queue.RecordView: the same attribute names


async def claim_next(
    db: Database, deps: TaskDeps, runner_id: uuid.UUID, *, max_tasks: int, start: bool
) -> Claim | None:
    """The next task(s) this runner may claim, or None when there is nothing for it now."""
    if not db.is_sqlite:
        claim = await _claim_on_driver(db, deps, runner_id, max_tasks, start, None)
        if claim is not _GENERAL:
            return claim
    async with db.transaction() as session:
        return await claims.claim(session, deps, runner_id, max_tasks=max_tasks, start=start)


async def claim_task(
    db: Database, deps: TaskDeps, runner_id: uuid.UUID, task_id: uuid.UUID, *, start: bool
) -> Claim:
    """Claim one named task (after a push offer), or raise why it cannot be claimed."""
    if not db.is_sqlite:
        claim = await _claim_on_driver(db, deps, runner_id, 1, start, task_id)
        if isinstance(claim, Claim):
            return claim
    # SQLite, or a refusal to explain (the general path raises the precise error).
    async with db.transaction() as session:
        named = await claims.claim(session, deps, runner_id, start=start, task_id=task_id)
    assert named is not None  # a named claim raises rather than answering nothing
    return named


class _Route(enum.Enum):
    GENERAL = "general"  # not for the driver path: unknown or banned runner, or a refusal


_GENERAL: Final = _Route.GENERAL


async def _claim_on_driver(
    db: Database,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    max_tasks: int,
    start: bool,
    task_id: uuid.UUID | None,
) -> Claim | Literal[_Route.GENERAL] | None:
    """Lock the runner, read the candidates with its usage, place, claim: one transaction.
    None when a next-task claim finds nothing; _GENERAL when the general path must answer
    (it raises the same errors as before: unknown or banned runner, a named task refused)."""
    now = deps.clock.now()
    async with db.driver_connection() as conn, conn.transaction():
        row = await pg_queue.lock_runner(conn, runner_id)
        runner = None if row is None else claim_repo.ClaimingRunner(*row)
        if runner is None or runner.banned_at is not None:
            return _GENERAL
        if runner.status != "online" or runner.drain_requested:
            return _GENERAL if task_id is not None else None
        candidates = await pg_queue.claim_candidates(
            conn, runner.id, now, task_id=task_id, **runner.candidate_limits(max_tasks)
        )
        chosen = claims.choose(runner, candidates, max_tasks) if candidates else []
        if not chosen:
            return _GENERAL if task_id is not None else None
        token = claims.new_claim_token(deps)
        lease_until = now + timedelta(seconds=deps.lease_seconds)
        rows = await pg_queue.mark_claimed(
            conn, chosen, runner.id, hash_token(token), now, lease_until, start
        )
    if not rows:
        return _GENERAL if task_id is not None else None
    return Claim(rows, token, deps.lease_seconds, lease_until)


async def start_task(
    db: Database, deps: TaskDeps, runner_id: uuid.UUID, task_id: uuid.UUID, token: str
) -> TaskLike:
    if not db.is_sqlite:
        async with db.driver_connection() as conn:
            row = await pg_queue.start_held(
                conn, task_id, runner_id, hash_token(token), deps.clock.now()
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
        done = await pg_queue.complete_held(
            conn,
            task_id,
            runner_id,
            hash_token(token),
            now,
            exit_code=report.exit_code,
            output=report.inline_output(deps.output_inline_max_bytes),
            output_cid=report.output_cid,
            error=report.error,
            result_hash=report.digest(),
            usage=dict(report.usage),
            admins=deps.events.admins,
        )
    if done is None:
        return None
    # Committed: wake the creator's event readers (and the delivery loop when webhooks were
    # queued), then let a freed slot place a due task.
    deps.events.hub.publish([done.task.creator_address.lower()], deliveries=done.deliveries > 0)
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
