"""A claim handed to a waiting long-poll in the transaction that creates the task.

A task routed to one runner (an LLM prompt) would otherwise be committed, its runner's
long-poll woken, and a second write transaction run to claim it. When that runner's long-poll
waits on this replica, the creating transaction claims the task for it instead, through the
queue's one claim (``queue.ops.claim`` of the named task, with every check a claim makes: the
runner online and not draining, a free slot, placement), and the long-poll answers the claim
after the commit. A rollback frees the long-poll; a long-poll gone before the commit (its
runner hung up) has its claim given back untouched, as a runner's own release does.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.hooks import after_commit, after_rollback
from parity.db.session import Database
from parity.logging import get_logger
from parity.tasks import lifecycle
from parity.tasks.deps import TaskDeps
from parity.tasks.queue import ops
from parity.tasks.queue.executors import executor_for
from parity.tasks.queue.ops import Claim

log = get_logger("parity.tasks")
_background: set[asyncio.Task[None]] = set()


async def hand_over(
    session: AsyncSession, deps: TaskDeps, task_id: uuid.UUID, runner_id: uuid.UUID
) -> Claim | None:
    """Claim the new task ``task_id`` (written in ``session``'s transaction) for ``runner_id``
    when a long-poll of that runner waits here; it answers the claim once the transaction
    commits. None (nothing claimed; the task stays offered) when no long-poll waits or the
    claim is refused."""
    handoff = deps.wakeups.reserve(runner_id)
    if handoff is None:
        return None
    try:
        x = await executor_for(session)
        got = await ops.claim(x, deps, runner_id, max_tasks=1, start=handoff.start, task_id=task_id)
    except BaseException:
        handoff.cancel()
        raise
    if not isinstance(got, Claim):
        handoff.cancel()
        return None

    def deliver() -> None:
        handoff.deliver(got)  # a long-poll gone meanwhile: the claim is given back

    after_rollback(session, handoff.cancel)
    after_commit(session, deliver)
    return got


def release_later(db: Database, deps: TaskDeps, runner_id: uuid.UUID, claim: Any) -> None:
    """Give back, untouched, a claim handed to a long-poll that had gone (in the background:
    the caller is an after-commit callback or a request's exit)."""

    async def release() -> None:
        for task in claim.tasks:
            try:
                async with db.transaction() as session:
                    await lifecycle.release(session, deps, runner_id, task.id, claim.token)
                log.info("handed_claim_released", task_id=str(task.id), runner_id=str(runner_id))
            except Exception as exc:  # ended meanwhile, or the database: its lease covers it
                log.warning("handed_claim_not_released", task_id=str(task.id), error=str(exc))

    job = asyncio.get_running_loop().create_task(release())
    _background.add(job)
    job.add_done_callback(_background.discard)
