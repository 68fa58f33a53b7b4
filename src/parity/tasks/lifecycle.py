"""The runner side of a claimed task: start, complete, fail, release, lease renewal, logs, and
lease expiry (the claim itself is in ``claims``). Every transition is fenced by the claim token
bound to (task, attempt, runner); repeating a transition with the same token answers with the
current task. Status changes go through ``queue.transitions``; the common start and complete
through ``queue.ops`` (the same statements as the PostgreSQL fast path)."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.clock import utc_iso
from parity.core.tasks.states import ACTIVE, TERMINAL, TaskStatus
from parity.core.tokens import hash_token
from parity.db.hooks import after_commit
from parity.tasks import billing
from parity.tasks import queue_repository as queue_repo
from parity.tasks import repository as repo
from parity.tasks.deps import TaskDeps
from parity.tasks.errors import ClaimInvalid, InvalidTransition, StaleClaim, TaskNotFound
from parity.tasks.models import Task, TaskAttempt, TaskLog
from parity.tasks.queue import ops
from parity.tasks.queue import transitions as tr
from parity.tasks.queue.executors import executor_for

# session.info key: (task due, push runner online) as the completing UPDATE returned them.
_SLOT_FREED = "parity.tasks.slot_freed"


@dataclass
class Fenced:
    task: Task
    attempt: TaskAttempt
    current: bool


async def _fence(
    session: AsyncSession, task_id: uuid.UUID, runner_id: uuid.UUID, token_hash: str
) -> Fenced:
    rows = await queue_repo.fence_rows(session, task_id, token_hash)
    if rows is None:
        raise TaskNotFound(f"task {task_id} not found")
    task, attempt = rows
    if attempt is None or attempt.runner_id != runner_id:
        raise ClaimInvalid("claim_token does not belong to this runner and task")
    current = task.attempts == attempt.attempt and task.claim_token_hash == token_hash
    if not (current and task.status in ACTIVE):
        # On PostgreSQL the attempt came with the snapshot taken before the task lock was
        # granted; a transition that committed meanwhile (a retried complete) changed it.
        attempt = await queue_repo.attempt_by_token(session, task_id, token_hash) or attempt
        return Fenced(task, attempt, False)
    return Fenced(task, attempt, True)


def _not_current(f: Fenced, wanted: str) -> Exception:
    if f.task.attempts > f.attempt.attempt:
        return StaleClaim(
            f"claim of attempt {f.attempt.attempt} is stale (task is at attempt {f.task.attempts})",
            details={"status": f.task.status, "attempt": f.task.attempts},
        )
    return InvalidTransition(
        f"cannot {wanted}: task is {f.task.status}", details={"status": f.task.status}
    )


async def start(
    session: AsyncSession, deps: TaskDeps, runner_id: uuid.UUID, task_id: uuid.UUID, token: str
) -> Any:
    token_hash = hash_token(token)
    now = deps.clock.now()
    task = await ops.start_held(await executor_for(session), task_id, runner_id, token_hash, now)
    if task is not None:
        return task
    # Not assigned under this runner's current claim: a repeat, or a refusal to explain.
    f = await _fence(session, task_id, runner_id, token_hash)
    if not f.current:
        raise _not_current(f, "start")
    if f.task.status == TaskStatus.ASSIGNED:
        await tr.transition(session, deps, f.task, tr.START, now=now)
        f.attempt.started_at = now
    return f.task


async def current_attempt(
    session: AsyncSession,
    runner_id: uuid.UUID,
    task_id: uuid.UUID,
    token: str,
    doing: str = "stream",
) -> tuple[Task, int]:
    """The task and attempt number of a claim that is current and active (assigned, running,
    cancel requested), else the fence's refusal ("cannot ``doing``"): for runner calls that
    change no task state (the streaming leg, storing the output)."""
    f = await _fence(session, task_id, runner_id, hash_token(token))
    if not f.current:
        raise _not_current(f, doing)
    return f.task, f.attempt.attempt


async def output_owner(
    session: AsyncSession, runner_id: uuid.UUID, task_id: uuid.UUID, token: str
) -> str:
    """Whose the output a runner stores for a task it holds is: the task's creator (the pin
    goes to them), once the claim is the current one; else the fence's refusal."""
    task, _ = await current_attempt(session, runner_id, task_id, token, "store its output")
    return str(task.creator_address)


def holds_current_claim(
    task_runner_id: uuid.UUID | None,
    task_status: str | None,
    task_token_hash: str | None,
    runner_id: uuid.UUID,
    token: str,
) -> bool:
    """Whether ``token`` is the current claim of an active task held by ``runner_id``, from the
    task row's columns another domain read along with its own rows (no fence query). False
    means "ask the fence" (:func:`current_attempt`), which names the refusal."""
    return (
        task_runner_id == runner_id
        and task_status in ACTIVE
        and task_token_hash is not None
        and hmac.compare_digest(task_token_hash, hash_token(token))
    )


@dataclass(frozen=True)
class Report:
    """What a runner reports with a completion."""

    output: str | None = None
    output_cid: str | None = None
    exit_code: int | None = None
    error: str | None = None
    result_hash: str | None = None
    usage: dict[str, object] = field(default_factory=dict)

    def inline_output(self, limit: int) -> str | None:
        """The output as stored inline: cut at ``limit`` bytes with a marker."""
        return _cap_output(self.output, limit)[0]

    def result_fields(self, inline_limit: int) -> ops.ResultFields:
        return ops.ResultFields(
            output=self.inline_output(inline_limit),
            output_cid=self.output_cid,
            exit_code=self.exit_code,
            error=self.error,
            result_hash=self.digest(),
            usage=dict(self.usage),
        )

    def digest(self) -> str | None:
        """The runner's hash of its result, else SHA-256 of the output (None without either)."""
        if self.result_hash:
            return self.result_hash
        return hashlib.sha256(self.output.encode()).hexdigest() if self.output is not None else None


def _cap_output(output: str | None, limit: int) -> tuple[str | None, bool]:
    if output is None:
        return None, False
    raw = output.encode()
    if len(raw) <= limit:
        return output, False
    marker = f"\n[output truncated: {len(raw)} bytes, {limit} kept inline]"
    return raw[:limit].decode(errors="ignore") + marker, True


async def complete(
    session: AsyncSession,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    task_id: uuid.UUID,
    token: str,
    report: Report,
) -> Any:
    """Accept the one completion of a task. ``complete`` from ``assigned`` implies start."""
    now = deps.clock.now()
    token_hash = hash_token(token)
    x = await executor_for(session)
    fields = report.result_fields(deps.output_inline_max_bytes)
    # Common case first: one conditional UPDATE is both the fence and the transition.
    done = await ops.complete_held(
        x, task_id, runner_id, token_hash, now, fields, deps.events.admins_sorted
    )
    if done is not None:
        session.info[_SLOT_FREED] = (done.due, done.push)  # read by slot_freed: no second query
        await tr.settle(
            session,
            deps,
            done.task,
            tr.COMPLETE,
            event_recorded=x.statements.single,
            deliveries=done.deliveries > 0,
            attempts=done.task.attempts,
        )
        return done.task
    f = await _fence(session, task_id, runner_id, token_hash)
    if f.attempt.outcome == tr.COMPLETE.outcome:
        return f.task  # a retried completion after a timeout
    raise _not_current(f, "complete")


async def _retry_or_fail(
    session: AsyncSession,
    deps: TaskDeps,
    task: Task,
    reason: str,
    exclude: uuid.UUID | None,
    *,
    attempt: TaskAttempt | None,
    outcome: str,
    retry: bool = True,
) -> None:
    now = deps.clock.now()
    if task.status == TaskStatus.CANCEL_REQUESTED:
        # The client asked to stop: a failure is the acknowledgement, never a retry, and the
        # attempt ends cancelled (a lease that ran out meanwhile keeps saying so). The reason
        # is set first: what the transition's enders announce (``prompt.failed``) reads it.
        task.last_error = reason
        await tr.transition(
            session,
            deps,
            task,
            tr.CANCEL_ACKNOWLEDGED,
            now=now,
            attempt=attempt,
            outcome="cancelled" if outcome == "failed" else outcome,
            event_data={"last_error": reason},
        )
        return
    used = task.attempts - task.releases
    decision = deps.retry.decide_after_failure(used, task.max_attempts, now, deps.rand())
    facts = {"attempts": task.attempts, "max_attempts": task.max_attempts, "last_error": reason}
    if retry and decision.retry and decision.available_at is not None:
        if exclude is not None:
            await repo.add_exclusion(session, task.id, exclude)
        at = decision.available_at
        await tr.transition(
            session,
            deps,
            task,
            tr.RETRY,
            now=now,
            attempt=attempt,
            outcome=outcome,
            event_data={**facts, "available_at": utc_iso(at)},
            available_at=at,
            reason=reason,
        )
    else:
        await tr.transition(
            session,
            deps,
            task,
            tr.FAIL,
            now=now,
            attempt=attempt,
            outcome=outcome,
            event_data=facts,
            reason=reason,
        )


async def fail(
    session: AsyncSession,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    task_id: uuid.UUID,
    token: str,
    *,
    error: str,
    exit_code: int | None,
    output: str | None = None,
    usage: dict[str, Any] | None = None,
) -> Task:
    """A failed run: retried later on another runner while attempts remain, else ``failed``.
    ``output``/``usage``: what the run delivered before it broke off, handed to the task type's
    keeper (``billing.PARTIALS``); work that already reached the client is never re-run."""
    f = await _fence(session, task_id, runner_id, hash_token(token))
    if not f.current:
        if f.attempt.outcome == "failed":
            return f.task
        raise _not_current(f, "fail")
    f.attempt.exit_code = exit_code
    f.attempt.error = error[:4000]
    retry = True
    keeper = billing.PARTIALS.get(f.task.type)
    if keeper is not None and (output or usage):
        retry = not await keeper(session, f.task, f.attempt, output, dict(usage or {}))
    await _retry_or_fail(
        session,
        deps,
        f.task,
        error[:4000],
        runner_id,
        attempt=f.attempt,
        outcome="failed",
        retry=retry,
    )
    return f.task


async def release(
    session: AsyncSession, deps: TaskDeps, runner_id: uuid.UUID, task_id: uuid.UUID, token: str
) -> Task:
    """Give a claimed task back untouched (graceful shutdown): not counted as a failure."""
    f = await _fence(session, task_id, runner_id, hash_token(token))
    if not f.current:
        if f.attempt.outcome == "released":
            return f.task
        raise _not_current(f, "release")
    await _release(session, deps, f.task, f.attempt, "released")
    return f.task


async def _release(
    session: AsyncSession, deps: TaskDeps, task: Task, attempt: TaskAttempt | None, why: str
) -> None:
    now = deps.clock.now()
    cancelled = task.status == TaskStatus.CANCEL_REQUESTED
    edge = tr.CANCEL_ACKNOWLEDGED if cancelled else tr.RELEASE
    await tr.transition(session, deps, task, edge, now=now, attempt=attempt, outcome=why)


def run_deadline(deps: TaskDeps, task: Task) -> datetime | None:
    """When a started task with a ``timeout_seconds`` must have reported: its time limit from
    its start, plus one lease period for the runner to stop it and say so. None without one."""
    if task.started_at is None or not task.timeout_seconds:
        return None
    return task.started_at + timedelta(seconds=task.timeout_seconds + deps.lease_seconds)


def lease_until(deps: TaskDeps, task: Task, now: datetime) -> datetime:
    """A renewed lease's expiry: one lease period from now, never past the task's run deadline
    (so a runner that keeps renewing a run past its time limit loses the claim, and the lease
    expiry retries or fails it)."""
    until = now + timedelta(seconds=deps.lease_seconds)
    deadline = run_deadline(deps, task)
    return until if deadline is None else max(min(until, deadline), now)


async def renew(
    session: AsyncSession, deps: TaskDeps, runner_id: uuid.UUID, task_id: uuid.UUID, token: str
) -> Task:
    f = await _fence(session, task_id, runner_id, hash_token(token))
    if not f.current:
        raise _not_current(f, "renew the lease")
    now = deps.clock.now()
    f.task.lease_expires_at = lease_until(deps, f.task, now)
    await session.flush()
    return f.task


# Attempt outcomes of a run that ended its task itself (not an expired or given-back claim).
_RUN_ENDINGS = frozenset({"completed", "failed", "cancelled"})


async def append_logs(
    session: AsyncSession,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    task_id: uuid.UUID,
    token: str,
    seq: int,
    lines: list[str],
) -> tuple[bool, bool, int]:
    """Store a chunk (idempotent on task, attempt, seq). Past the per-task budget the chunk is
    cut and a marker is stored once. Returns (accepted, truncated, stored_bytes)."""
    f = await _fence(session, task_id, runner_id, hash_token(token))
    task = f.task
    # The current claim logs; so does the attempt that ended the task (its last lines may
    # arrive after its completion). A superseded or expired claim does not: it would spend
    # the task's log budget on a run that no longer counts.
    ended_by_it = (
        task.status in TERMINAL
        and task.attempts == f.attempt.attempt
        and f.attempt.outcome in _RUN_ENDINGS
    )
    if not (f.current or ended_by_it):
        raise _not_current(f, "append logs")
    if await repo.find_log(session, task.id, f.attempt.attempt, seq) is not None:
        return True, False, task.log_bytes
    budget = deps.log_max_bytes - task.log_bytes
    if budget <= 0:
        return False, True, task.log_bytes
    kept: list[str] = []
    used = 0
    truncated = False
    for line in lines:
        size = len(line.encode()) + 1
        if used + size > budget:
            truncated = True
            break
        kept.append(line)
        used += size
    if truncated:
        kept.append(f"[log truncated: {deps.log_max_bytes} bytes per task kept]")
        used = budget  # nothing more is stored for this task
    await repo.add_log(
        session,
        TaskLog(
            id=uuid.uuid4(),
            task_id=task.id,
            attempt=f.attempt.attempt,
            seq=seq,
            lines=kept,
            truncated=truncated,
            created_at=deps.clock.now(),
        ),
    )
    task.log_bytes += used
    await session.flush()
    return True, truncated, task.log_bytes


async def slot_freed(session: AsyncSession, deps: TaskDeps, now: datetime) -> bool:
    """A runner freed a slot, so a due untargeted task may be offered again. True when a
    push-capable runner is online: the caller then runs the full re-offer
    (``service.reoffer_pending``). Otherwise that re-offer could only wake a waiting pull
    runner, which is done here after commit without loading tasks or runners."""
    known = session.info.pop(_SLOT_FREED, None)
    due, push = (
        known if known is not None else await queue_repo.due_unoffered_and_push(session, now)
    )
    if not due:
        return False
    if push:
        return True
    wakeups = deps.wakeups

    def wake_one() -> None:
        wakeups.wake_any(1)

    after_commit(session, wake_one)
    return False


async def expire_leases(session: AsyncSession, deps: TaskDeps, now: datetime) -> int:
    """Lease expiry counts as an attempt: retried elsewhere, or failed when none remain."""
    tasks = await queue_repo.expired_leases(session, now, limit=200)
    for task in tasks:
        attempt = await repo.current_attempt(session, task)
        runner = task.runner_id
        deadline = run_deadline(deps, task)
        timed_out = deadline is not None and now >= deadline
        if attempt is not None and attempt.ended_at is None:
            attempt.error = (
                f"timed out: no result {task.timeout_seconds} s after it started"
                if timed_out
                else "lease expired without renewal (runner silent or offline)"
            )
        await _retry_or_fail(
            session,
            deps,
            task,
            f"timed out after {task.timeout_seconds} s on runner {runner} (no result by then)"
            if timed_out
            else f"lease expired on runner {runner}",
            runner,
            attempt=attempt,
            outcome="lease_expired",
        )
    return len(tasks)


async def release_runner_claims(
    session: AsyncSession,
    deps: TaskDeps,
    runner_id: uuid.UUID,
    *,
    keep: Collection[str] = (),
) -> list[uuid.UUID]:
    """Give a runner's claims back (not counted as failures), except those whose claim-token
    hash is in ``keep``: all of them when it reports ``offline``, the ones it does not know of
    when it reconciles."""
    tasks = [
        t
        for t in await queue_repo.runner_active_tasks(session, runner_id, lock=True)
        if t.claim_token_hash not in keep
    ]
    for task in tasks:
        await _release(session, deps, task, await repo.current_attempt(session, task), "released")
    return [t.id for t in tasks]
