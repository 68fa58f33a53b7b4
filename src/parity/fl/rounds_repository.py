"""SQL of the round machinery: participants, rounds, slots, the runners a session may take and
the tasks behind its slots. Every state change here is a conditional UPDATE on the status it
leaves, so a step run twice (two replicas, a restart) applies once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import ACTIVE, TaskStatus
from parity.fl.models import FLParticipant, FLRound, FLRoundSlot
from parity.runners.models import Runner
from parity.tasks.queue.statements import TASKS

COLLECTING = "collecting"
AGGREGATING = "aggregating"
COMPLETED = "completed"
FAILED = "failed"

ASSIGNED = "assigned"
SUBMITTED = "submitted"
DROPPED = "dropped"

ACTIVE_PARTICIPANT = "active"
REPLACED = "replaced"

ACTIVE_TASK = tuple(s.value for s in ACTIVE)


async def active_participants(session: AsyncSession, session_id: uuid.UUID) -> list[FLParticipant]:
    """The session's current participants (replaced ones left out), by index."""
    q = (
        select(FLParticipant)
        .where(
            FLParticipant.session_id == session_id,
            FLParticipant.status == ACTIVE_PARTICIPANT,
        )
        .order_by(FLParticipant.participant_index)
    )
    return list((await session.scalars(q)).all())


async def get_round(
    session: AsyncSession, round_id: uuid.UUID, *, lock: bool = False
) -> FLRound | None:
    """A round; ``lock``: locked for update, so a close waits for the updates being accepted
    (they hold the round shared: ``update_sql.round_state``), and they for it (PostgreSQL)."""
    q = select(FLRound).where(FLRound.id == round_id)
    if lock:
        q = q.with_for_update().execution_options(populate_existing=True)
    return (await session.scalars(q)).one_or_none()


async def slots_of(session: AsyncSession, round_id: uuid.UUID) -> list[FLRoundSlot]:
    q = (
        select(FLRoundSlot)
        .where(FLRoundSlot.round_id == round_id)
        .order_by(FLRoundSlot.participant_index)
        .execution_options(populate_existing=True)
    )
    return list((await session.scalars(q)).all())


async def slot_of_runner(
    session: AsyncSession, round_id: uuid.UUID, runner_id: uuid.UUID
) -> FLRoundSlot | None:
    q = select(FLRoundSlot).where(
        FLRoundSlot.round_id == round_id, FLRoundSlot.runner_id == runner_id
    )
    return (await session.scalars(q)).first()


@dataclass(frozen=True)
class SlotTask:
    """A waiting slot and the state of its ``fl_train`` task."""

    slot_id: uuid.UUID
    round_id: uuid.UUID
    runner_id: uuid.UUID
    task_id: uuid.UUID
    task_status: str
    last_error: str | None


def _slot_tasks(rows: Sequence[Any]) -> list[SlotTask]:
    return [SlotTask(*row) for row in rows]


def _waiting_slots() -> Any:
    return (
        select(
            FLRoundSlot.id,
            FLRoundSlot.round_id,
            FLRoundSlot.runner_id,
            FLRoundSlot.task_id,
            TASKS.c.status,
            TASKS.c.last_error,
        )
        .join(TASKS, TASKS.c.id == FLRoundSlot.task_id)
        .join(FLRound, FLRound.id == FLRoundSlot.round_id)
        .where(FLRoundSlot.status == ASSIGNED, FLRound.status == COLLECTING)
    )


async def slots_with_ended_tasks(session: AsyncSession, limit: int) -> list[SlotTask]:
    """Waiting slots of collecting rounds whose task ended without an accepted update: failed
    (its lease expired: max_attempts is 1), cancelled, or completed through the plain task
    endpoint instead of the model-update one."""
    q = _waiting_slots().where(TASKS.c.status.notin_((*ACTIVE_TASK, TaskStatus.PENDING.value)))
    return _slot_tasks((await session.execute(q.limit(limit))).all())


async def slots_with_released_tasks(session: AsyncSession, limit: int) -> list[SlotTask]:
    """Waiting slots whose task went back to the queue untargeted (the runner released it):
    nobody could claim it, so it is offered to its participant again."""
    q = _waiting_slots().where(
        TASKS.c.status == TaskStatus.PENDING.value, TASKS.c.target_runner_id.is_(None)
    )
    return _slot_tasks((await session.execute(q.limit(limit))).all())


async def drop_slot(session: AsyncSession, slot_id: uuid.UUID, reason: str) -> bool:
    """assigned -> dropped; False when the slot had already moved on."""
    result = await session.execute(
        update(FLRoundSlot)
        .where(FLRoundSlot.id == slot_id, FLRoundSlot.status == ASSIGNED)
        .values(status=DROPPED, drop_reason=reason[:4000])
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


async def closable_rounds(session: AsyncSession, now: datetime, limit: int) -> list[uuid.UUID]:
    """Collecting rounds past their deadline or with no slot still waiting."""
    waiting = exists().where(FLRoundSlot.round_id == FLRound.id, FLRoundSlot.status == ASSIGNED)
    q = (
        select(FLRound.id)
        .where(FLRound.status == COLLECTING)
        .where((FLRound.deadline_at <= now) | ~waiting)
        .order_by(FLRound.deadline_at)
        .limit(limit)
    )
    return list((await session.scalars(q)).all())


async def aggregating_rounds(session: AsyncSession, limit: int) -> list[uuid.UUID]:
    q = (
        select(FLRound.id)
        .where(FLRound.status == AGGREGATING)
        .order_by(FLRound.closed_at, FLRound.id)
        .limit(limit)
    )
    return list((await session.scalars(q)).all())


async def set_round_status(
    session: AsyncSession, round_id: uuid.UUID, source: str, **values: Any
) -> bool:
    """Move a round out of ``source`` (conditional: False when it is no longer there)."""
    result = await session.execute(
        update(FLRound)
        .where(FLRound.id == round_id, FLRound.status == source)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


def _changed(result: Any) -> bool:
    assert isinstance(result, CursorResult)
    return bool(result.rowcount)


async def submitted_slots(session: AsyncSession, round_id: uuid.UUID) -> list[FLRoundSlot]:
    """The round's accepted updates, by participant index (the aggregation order)."""
    q = (
        select(FLRoundSlot)
        .where(FLRoundSlot.round_id == round_id, FLRoundSlot.status == SUBMITTED)
        .order_by(FLRoundSlot.participant_index)
    )
    return list((await session.scalars(q)).all())


async def runners_by_id(session: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Runner]:
    if not ids:
        return {}
    q = select(Runner).where(Runner.id.in_(list(ids)))
    return {r.id: r for r in (await session.scalars(q)).all()}


async def fl_runners(session: AsyncSession) -> list[Runner]:
    """Runners that may join a session now: online, not draining, not banned, advertising FL."""
    q = select(Runner).where(
        and_(
            Runner.status == "online",
            Runner.banned_at.is_(None),
            Runner.drain_requested.is_(False),
            Runner.fl.is_(True),
        )
    )
    return list((await session.scalars(q)).all())


async def runner_ids_of(session: AsyncSession, session_id: uuid.UUID) -> set[uuid.UUID]:
    """Runners that are active participants of the session."""
    q = select(FLParticipant.runner_id).where(
        FLParticipant.session_id == session_id,
        FLParticipant.status == ACTIVE_PARTICIPANT,
    )
    return set((await session.scalars(q)).all())
