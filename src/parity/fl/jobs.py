"""The rounds job: every scheduler tick, and at once when the last update of a round commits
(``FLDeps.rounds_now``), it

1. drops the slots whose ``fl_train`` task ended without an update (its lease expired, it was
   cancelled or failed) and offers a task its runner released back to that runner;
2. closes collecting rounds whose slots are all resolved or whose deadline passed: with enough
   accepted updates the round goes on to aggregation, otherwise it fails and so does its
   session, with the reason (a SecAgg+ round instead moves through its stages and its
   unmasking: :func:`parity.fl.secagg_unmask.advance_rounds`);
3. aggregates the rounds waiting for it, which opens the next round or completes the session.

A round whose last update has just committed is named in its wake (``FLDeps.wake``): it is
closed and aggregated first, and a wake that names rounds only skips the sweeps until the
interval has passed since the last one.

Each item commits on its own and every change is conditional on the state it leaves, so the
job is safe to run twice and resumes whatever a restart interrupted (a round found in
``aggregating`` is computed again: the result is content-addressed, the apply conditional).
Aggregation runs outside any transaction (no database lock is held while it computes), so the
tick is not one transaction: it runs under a session advisory lock (PostgreSQL) instead."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.session import Database
from parity.fl import aggregate, rounds, secagg_stages, secagg_unmask
from parity.fl import repository as session_repo
from parity.fl import rounds_repository as repo
from parity.fl.deps import FLDeps
from parity.fl.models import FLRound
from parity.jobs.locks import Serialized, SessionAdvisoryLock, job_key
from parity.jobs.loop import BackgroundLoop, MetricsHook
from parity.logging import get_logger
from parity.tasks import internal

log = get_logger("parity.fl")

JOB_NAME = "fl_rounds"
JOB_BATCH = 50


def _drop_reason(status: str, last_error: str | None) -> str:
    if status == "completed":
        return "its task was completed without a model update"
    return f"its task was {status}" + (f": {last_error}" if last_error else "")


async def drop_ended_slots(db: Database, deps: FLDeps) -> int:
    """Step 1: slots whose task ended are dropped; released tasks go back to their runner."""
    async with db.read_session() as session:
        ended = await repo.slots_with_ended_tasks(session, JOB_BATCH)
        released = await repo.slots_with_released_tasks(session, JOB_BATCH)
        runners = await repo.runners_by_id(session, [item.runner_id for item in released])
    n = 0
    for item in ended:
        async with db.transaction() as session:
            if await repo.drop_slot(
                session, item.slot_id, _drop_reason(item.task_status, item.last_error)
            ):
                n += 1
    for item in released:
        push = rounds.can_push(runners.get(item.runner_id))
        async with db.transaction() as session:
            if await internal.target_internal_task(
                session, deps.tasks, item.task_id, item.runner_id, push=push
            ):
                n += 1
    return n


def failure_reason(
    round_: FLRound,
    accepted: int,
    min_share: float | None,
    deadline: bool,
    dropped: Sequence[tuple[int, str | None]] = (),
) -> str:
    """Why a round failed, in words: ``round 3: 4 of 10 updates by the deadline, 8 required
    (min_share 0.8)``, then why the participants in ``dropped`` (index, drop reason) were
    dropped before the round closed (a refused update: the error its runner reported), so
    the session's ``failure_reason`` says what went wrong and not only how many were left."""
    number, k, required = round_.number, round_.participants, round_.required_updates
    when = "by the deadline" if deadline else "before the other participants dropped out"
    rule = f"min_share {min_share:g}" if min_share is not None else "every participant must report"
    text = f"round {number}: {accepted} of {k} updates {when}, {required} required ({rule})"
    return text + _drop_reasons(dropped)


# At most this many distinct drop reasons are spelled out, each at most this long.
SHOWN_DROP_REASONS = 3
MAX_DROP_REASON = 300


def _drop_reasons(dropped: Sequence[tuple[int, str | None]]) -> str:
    """``; dropped: participant 0: its task was failed: …; participants 1, 2: …`` (the same
    reason once, with every index that gave it)."""
    by_reason: dict[str, list[int]] = {}
    for index, reason in sorted(dropped):
        text = (reason or "no reason recorded").strip()
        if len(text) > MAX_DROP_REASON:
            text = text[: MAX_DROP_REASON - 1] + "…"
        by_reason.setdefault(text, []).append(index)
    if not by_reason:
        return ""
    parts = []
    for reason, indices in list(by_reason.items())[:SHOWN_DROP_REASONS]:
        who = "participant" + ("s " if len(indices) > 1 else " ")
        parts.append(who + ", ".join(str(i) for i in indices) + f": {reason}")
    rest = sum(len(indices) for indices in list(by_reason.values())[SHOWN_DROP_REASONS:])
    if rest:
        parts.append(f"{rest} more for other reasons")
    return "; dropped: " + "; ".join(parts)


async def close_round(session: AsyncSession, deps: FLDeps, round_id: uuid.UUID) -> bool:
    """Step 2 for one round, in the caller's transaction. False when it is not due (or was
    closed already)."""
    found = await repo.get_round(session, round_id)
    if found is None:
        return False
    fl_session = await session_repo.get_session(session, found.session_id, lock=True)
    round_ = await repo.get_round(session, round_id, lock=True)
    if fl_session is None or round_ is None or round_.status != repo.COLLECTING:
        return False
    if secagg_stages.enabled(fl_session):
        return False  # its SecAgg+ stages close it (secagg_unmask.advance_rounds)
    now = deps.clock.now()
    slots = await repo.slots_of(session, round_id)
    deadline = now >= round_.deadline_at
    if any(s.status == repo.ASSIGNED for s in slots) and not deadline:
        return False
    accepted = sum(1 for s in slots if s.status == repo.SUBMITTED)
    dropped = [(s.participant_index, s.drop_reason) for s in slots if s.status == repo.DROPPED]
    late = f"round {round_.number} closed at its deadline without this participant's update"
    await rounds.end_waiting_slots(session, deps, round_id, late)
    if fl_session.status != "active":
        return await repo.set_round_status(
            session,
            round_id,
            repo.COLLECTING,
            status=repo.FAILED,
            closed_at=now,
            failure_reason=f"the session is {fl_session.status}",
        )
    if accepted >= round_.required_updates:
        return await repo.set_round_status(
            session, round_id, repo.COLLECTING, status=repo.AGGREGATING, closed_at=now
        )
    min_share = rounds.settings_of(fl_session).min_share
    reason = failure_reason(round_, accepted, min_share, deadline, dropped)
    await repo.set_round_status(
        session, round_id, repo.COLLECTING, status=repo.FAILED, closed_at=now, failure_reason=reason
    )
    await rounds.fail_session(session, deps, fl_session, reason, now)
    return True


async def close_due_rounds(db: Database, deps: FLDeps) -> int:
    async with db.read_session() as session:
        due = await repo.closable_rounds(session, deps.clock.now(), JOB_BATCH)
    n = 0
    for round_id in due:
        async with db.transaction() as session:
            n += int(await close_round(session, deps, round_id))
    return n


async def _aggregate(db: Database, deps: FLDeps, round_id: uuid.UUID) -> int:
    """A round whose inputs cannot be read now (the store does not answer) is logged and
    tried again next tick; the others go on."""
    try:
        return int(await aggregate.aggregate_round(db, deps, round_id))
    except Exception as exc:
        log.warning(
            "fl_aggregation_retry",
            round_id=str(round_id),
            error=type(exc).__name__,
            detail=str(exc)[:200],
        )
        return 0


async def aggregate_ready_rounds(db: Database, deps: FLDeps) -> int:
    """Step 3, for every round waiting for it."""
    async with db.read_session() as session:
        ready = await repo.aggregating_rounds(session, JOB_BATCH)
    n = 0
    for round_id in ready:
        n += await _aggregate(db, deps, round_id)
    return n


async def finish_due_rounds(db: Database, deps: FLDeps, due: list[uuid.UUID]) -> int:
    """Steps 2 and 3 for the rounds whose last update has just committed, before any sweep:
    the participants wait for the next round, so it opens first."""
    n = 0
    for round_id in due:
        async with db.transaction() as session:
            closed = await close_round(session, deps, round_id)
        if closed:
            n += 1 + await _aggregate(db, deps, round_id)
    return n


async def run_rounds(db: Database, deps: FLDeps) -> int:
    """The rounds woken for (:meth:`FLDeps.wake`), then one pass of the three steps over every
    session; how many items changed."""
    due, _ = deps.take_due()
    n = await finish_due_rounds(db, deps, due)
    n += await drop_ended_slots(db, deps)
    n += await secagg_unmask.advance_rounds(db, deps)
    n += await close_due_rounds(db, deps)
    n += await aggregate_ready_rounds(db, deps)
    return n


class RoundsLoop:
    """Runs :func:`run_rounds` every ``interval`` seconds and whenever ``deps.rounds_now`` is
    set; one replica at a time (a session advisory lock on PostgreSQL)."""

    def __init__(
        self, db: Database, deps: FLDeps, *, interval: float, metrics: MetricsHook | None = None
    ) -> None:
        self.db = db
        self.deps = deps
        self.interval = interval
        self._swept_at = float("-inf")
        self.loop: BackgroundLoop[bool, int] = BackgroundLoop(
            JOB_NAME,
            self._tick,
            Serialized(SessionAdvisoryLock(db, job_key(JOB_NAME))),
            interval=interval,
            clock=deps.clock,
            wake=deps.rounds_now,
            metrics=metrics,
            log_ticks=False,
        )

    async def _tick(self, _held: bool) -> int:
        # A wake for named rounds only (their last updates) finishes those; the sweeps, which
        # look for what no update announces (ended tasks, deadlines, stages, an interrupted
        # aggregation), run on the interval as before, and at once when a wake asks for them.
        now = self.deps.clock.monotonic()
        due, sweep = self.deps.take_due()
        sweep = sweep or not due or now - self._swept_at >= self.interval
        n = await finish_due_rounds(self.db, self.deps, due)
        if sweep:
            self._swept_at = now
            n += await run_rounds(self.db, self.deps)
        return n

    async def run_once(self) -> int:
        """One tick under the lock (tests call it)."""
        result = await self.loop.run_tick()
        return result.items

    def start(self) -> None:
        self.loop.start()

    async def stop(self, timeout: float = 10.0) -> None:
        await self.loop.stop(timeout)


def rounds_job(db: Database, deps: FLDeps, interval: float) -> RoundsLoop:
    """The rounds job of a server (started and stopped with the app's other loops)."""
    return RoundsLoop(db, deps, interval=interval)
