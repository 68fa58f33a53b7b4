"""What a runner's registry events mean for its work: claims handed back with fresh tokens at
re-registration, leases renewed by a heartbeat, work released at once when the runner says it
stops (``offline``), leases expired when it is banned or falls silent. Called by the runner
endpoints and the liveness job after the registry's own change (``parity.runners`` knows
nothing of tasks)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import TaskStatus
from parity.core.tokens import hash_token
from parity.db.hooks import after_commit
from parity.tasks import lifecycle
from parity.tasks import queue_repository as queue_repo
from parity.tasks import repository as repo
from parity.tasks.deps import TaskDeps
from parity.tasks.models import Task
from parity.tasks.queue.ops import new_claim_token


async def rebind_claims(
    session: AsyncSession, deps: TaskDeps, runner_id: uuid.UUID
) -> list[tuple[Task, str, int]]:
    """Claims are stored only as hashes, so a re-registered runner gets a fresh token per
    claim (same attempt, lease renewed); its old tokens stop working."""
    out: list[tuple[Task, str, int]] = []
    now = deps.clock.now()
    for task in await queue_repo.runner_active_tasks(session, runner_id, lock=True):
        token = new_claim_token(deps)
        h = hash_token(token)
        attempt = await repo.current_attempt(session, task)
        task.claim_token_hash = h
        task.lease_expires_at = lifecycle.lease_until(deps, task, now)
        if attempt is not None:
            attempt.claim_token_hash = h
        out.append((task, token, task.attempts))
    await session.flush()
    return out


@dataclass(frozen=True)
class HeartbeatWork:
    revoked: list[str]
    cancel: list[uuid.UUID]
    renewed: list[uuid.UUID]


async def heartbeat(
    session: AsyncSession,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    claims: Sequence[str],
    *,
    offline: bool,
    came_online: bool,
) -> HeartbeatWork:
    """Renew the leases of the listed claims; answer which are revoked and which tasks must
    be cancelled. A runner that reports ``offline`` (its last call when it stops) gives all
    its work back now, each release fenced like a runner's own."""
    if offline:
        await release_all(session, deps, runner_id)
        return HeartbeatWork(revoked=list(claims), cancel=[], renewed=[])
    active = await queue_repo.runner_active_tasks(session, runner_id, lock=True)
    by_hash: dict[str, list[Task]] = {}
    for t in active:
        if t.claim_token_hash:
            by_hash.setdefault(t.claim_token_hash, []).append(t)
    revoked: list[str] = []
    renewed: list[uuid.UUID] = []
    now = deps.clock.now()
    for token in claims:
        held = by_hash.get(hash_token(token))
        if not held:
            revoked.append(token)
            continue
        for t in held:
            t.lease_expires_at = lifecycle.lease_until(deps, t, now)
            renewed.append(t.id)
    cancel = [t.id for t in active if t.status == TaskStatus.CANCEL_REQUESTED]
    await session.flush()
    if came_online:
        wakeups = deps.wakeups

        def wake() -> None:
            wakeups.wake_runner(runner_id)

        after_commit(session, wake)
    return HeartbeatWork(revoked=revoked, cancel=cancel, renewed=renewed)


async def release_all(session: AsyncSession, deps: TaskDeps, runner_id: uuid.UUID) -> int:
    """The runner stopped: its claims go back to the queue now (not counted as failures)."""
    return len(await release_unlisted(session, deps, runner_id, ()))


async def release_unlisted(
    session: AsyncSession, deps: TaskDeps, runner_id: uuid.UUID, claims: Sequence[str]
) -> list[uuid.UUID]:
    """Give back, untouched, every claim this runner holds that is not among ``claims`` (the
    tokens it knows): a claim whose answer it never received (the connection broke, the server
    restarted between commit and answer) would otherwise sit until its lease expired, and an
    FL participant's round task would be lost for the round. Not counted as failures."""
    keep = {hash_token(t) for t in claims}
    released = await lifecycle.release_runner_claims(session, deps, runner_id, keep=keep)
    n = len(released)
    if n:
        wakeups = deps.wakeups

        def wake() -> None:
            wakeups.wake_any(n)

        after_commit(session, wake)
    return released


async def runners_gone(
    session: AsyncSession,
    deps: TaskDeps,
    runner_ids: Sequence[uuid.UUID],
    now: datetime,
    *,
    sweep: bool,
) -> int:
    """Banned or silent runners: their leases expire now, so each attempt counts and the work
    is retried elsewhere (or fails when no attempts remain); with ``sweep`` the expired leases
    are processed at once, else by the lease job's next tick."""
    for rid in runner_ids:
        await queue_repo.expire_runner_leases(session, rid, now)
    if not runner_ids or not sweep:
        return 0
    return await lifecycle.expire_leases(session, deps, now)


async def active_counts(
    session: AsyncSession, runner_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """Claims held per runner (a runner holding one is ``busy``)."""
    return await repo.active_counts(session, runner_ids)


async def counts_by_status(session: AsyncSession) -> dict[str, int]:
    return await repo.count_by_status(session)
