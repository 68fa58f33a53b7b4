"""SQL of secure aggregation: a SecAgg+ round's state row, its stage messages, and the slots
and tasks behind them. Locks are always taken session → round → SecAgg state, the order the
rest of the round machinery uses."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import TaskStatus
from parity.fl import repository as session_repo
from parity.fl import rounds_repository as rounds_repo
from parity.fl.models import FLRound, FLRoundSlot, FLSession
from parity.fl.secagg_models import FLSecAggMessage, FLSecAggRound
from parity.tasks.queue.statements import TASKS


async def get_state(
    session: AsyncSession, round_id: uuid.UUID, *, lock: bool = False
) -> FLSecAggRound | None:
    q = select(FLSecAggRound).where(FLSecAggRound.round_id == round_id)
    if lock:
        q = q.with_for_update().execution_options(populate_existing=True)
    return (await session.scalars(q)).one_or_none()


async def round_by_number(
    session: AsyncSession, session_id: uuid.UUID, number: int
) -> tuple[FLSession, FLRound, FLSecAggRound | None] | None:
    """A session's round by number, with its SecAgg+ state (None: a plain round)."""
    q = (
        select(FLSession, FLRound, FLSecAggRound)
        .join(FLRound, FLRound.session_id == FLSession.id)
        .outerjoin(FLSecAggRound, FLSecAggRound.round_id == FLRound.id)
        .where(FLSession.id == session_id, FLRound.number == number)
        .execution_options(populate_existing=True)
    )
    row = (await session.execute(q)).first()
    return None if row is None else (row[0], row[1], row[2])


async def lock_round(
    session: AsyncSession, round_id: uuid.UUID
) -> tuple[FLSession, FLRound, FLSecAggRound] | None:
    """The session, the round and its SecAgg+ state, locked in that order."""
    found = await rounds_repo.get_round(session, round_id)
    if found is None:
        return None
    fl_session = await session_repo.get_session(session, found.session_id, lock=True)
    round_ = await rounds_repo.get_round(session, round_id, lock="update")
    state = await get_state(session, round_id, lock=True)
    if fl_session is None or round_ is None or state is None:
        return None
    return fl_session, round_, state


async def messages(
    session: AsyncSession,
    round_id: uuid.UUID,
    stage: str,
    *,
    sender: int | None = None,
    recipient: int | None = None,
    to_server: bool = False,
) -> list[FLSecAggMessage]:
    """A stage's messages, by sender; narrowed to one sender, one recipient, or those sent
    to the server itself (``to_server``: no recipient)."""
    q = select(FLSecAggMessage).where(
        FLSecAggMessage.round_id == round_id, FLSecAggMessage.stage == stage
    )
    if sender is not None:
        q = q.where(FLSecAggMessage.sender_index == sender)
    if recipient is not None:
        q = q.where(FLSecAggMessage.recipient_index == recipient)
    if to_server:
        q = q.where(FLSecAggMessage.recipient_index.is_(None))
    q = q.order_by(FLSecAggMessage.sender_index, FLSecAggMessage.recipient_index)
    return list((await session.scalars(q)).all())


async def senders(session: AsyncSession, round_id: uuid.UUID, stage: str) -> set[int]:
    """Participants that sent the stage's message to the server."""
    q = select(FLSecAggMessage.sender_index).where(
        FLSecAggMessage.round_id == round_id,
        FLSecAggMessage.stage == stage,
        FLSecAggMessage.recipient_index.is_(None),
        FLSecAggMessage.sender_index.is_not(None),
    )
    return {int(i) for i in (await session.scalars(q)).all() if i is not None}


async def slot_of_runner(
    session: AsyncSession, round_id: uuid.UUID, runner_id: uuid.UUID
) -> FLRoundSlot | None:
    return await rounds_repo.slot_of_runner(session, round_id, runner_id)


async def slots_with_active_tasks(
    session: AsyncSession, round_id: uuid.UUID, statuses: Sequence[str]
) -> list[FLRoundSlot]:
    """The round's slots in ``statuses`` whose ``fl_train`` task is still claimed or queued."""
    q = (
        select(FLRoundSlot)
        .join(TASKS, TASKS.c.id == FLRoundSlot.task_id)
        .where(
            FLRoundSlot.round_id == round_id,
            FLRoundSlot.status.in_(list(statuses)),
            TASKS.c.status.in_((*rounds_repo.ACTIVE_TASK, TaskStatus.PENDING.value)),
        )
        .order_by(FLRoundSlot.participant_index)
    )
    return list((await session.scalars(q)).all())


async def open_states(session: AsyncSession, stages: Sequence[str], limit: int) -> list[uuid.UUID]:
    """Rounds whose SecAgg+ protocol is still running, the nearest stage deadline first."""
    q = (
        select(FLSecAggRound.round_id)
        .where(FLSecAggRound.stage.in_(list(stages)))
        .order_by(FLSecAggRound.stage_deadline_at)
        .limit(limit)
    )
    return list((await session.scalars(q)).all())
