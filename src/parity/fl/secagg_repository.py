"""SQL of secure aggregation: a SecAgg+ round's state row, its stage messages, and the slots
and tasks behind them. Locks are always taken session → round → SecAgg state, the order the
rest of the round machinery uses."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import TaskStatus
from parity.fl import repository as session_repo
from parity.fl import rounds_repository as rounds_repo
from parity.fl.models import FLParticipant, FLRound, FLRoundSlot, FLSession
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


def _one_writer(session: AsyncSession) -> bool:
    """SQLite: one write transaction at a time (the database's write lock), so what a
    transaction reads cannot change under it and row locks add nothing (SQLite has none)."""
    return session.get_bind().dialect.name == "sqlite"


async def lock_round(
    session: AsyncSession, round_id: uuid.UUID
) -> tuple[FLSession, FLRound, FLSecAggRound] | None:
    """The session, the round and its SecAgg+ state, locked in that order (on SQLite read in
    one statement)."""
    if _one_writer(session):
        return await round_with_state(session, round_id)
    found = await rounds_repo.get_round(session, round_id)
    if found is None:
        return None
    fl_session = await session_repo.get_session(session, found.session_id, lock=True)
    round_ = await rounds_repo.get_round(session, round_id, lock=True)
    state = await get_state(session, round_id, lock=True)
    if fl_session is None or round_ is None or state is None:
        return None
    return fl_session, round_, state


async def lock_round_by_number(
    session: AsyncSession, session_id: uuid.UUID, number: int
) -> tuple[FLSession | None, FLRound | None, FLSecAggRound | None]:
    """The session, its round ``number`` and the round's SecAgg+ state, each read afresh under
    its row lock, in that order (None where there is none; on SQLite in one statement)."""
    if _one_writer(session):
        found = await round_by_number(session, session_id, number)
        if found is None:
            return await session_repo.get_session(session, session_id), None, None
        return found
    fl_session = await session_repo.get_session(session, session_id, lock=True)
    if fl_session is None:
        return None, None, None
    q = (
        select(FLRound)
        .where(FLRound.session_id == session_id, FLRound.number == number)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    round_ = (await session.scalars(q)).one_or_none()
    if round_ is None:
        return fl_session, None, None
    return fl_session, round_, await get_state(session, round_.id, lock=True)


async def round_with_state(
    session: AsyncSession, round_id: uuid.UUID
) -> tuple[FLSession, FLRound, FLSecAggRound] | None:
    """A SecAgg+ round with its session and state, in one statement (not locked)."""
    q = (
        select(FLSession, FLRound, FLSecAggRound)
        .join(FLRound, FLRound.session_id == FLSession.id)
        .join(FLSecAggRound, FLSecAggRound.round_id == FLRound.id)
        .where(FLRound.id == round_id)
        .execution_options(populate_existing=True)
    )
    row = (await session.execute(q)).first()
    return None if row is None else (row[0], row[1], row[2])


@dataclass(frozen=True)
class SlotClaim:
    """A slot of the round, its participant's partition size and its task's current claim
    (so the claim token of a stage message is recognised without another query)."""

    slot: FLRoundSlot
    partition_rows: int | None
    task_token_hash: str | None
    task_status: str | None
    task_runner_id: uuid.UUID | None


async def slots_with_claims(session: AsyncSession, round_id: uuid.UUID) -> list[SlotClaim]:
    """Every slot of the round (read afresh), by participant index, with its claim."""
    q = (
        select(
            FLRoundSlot,
            FLParticipant.num_examples,
            TASKS.c.claim_token_hash,
            TASKS.c.status,
            TASKS.c.runner_id,
        )
        .outerjoin(FLParticipant, FLParticipant.id == FLRoundSlot.participant_id)
        .outerjoin(TASKS, TASKS.c.id == FLRoundSlot.task_id)
        .where(FLRoundSlot.round_id == round_id)
        .order_by(FLRoundSlot.participant_index)
        .execution_options(populate_existing=True)
    )
    return [SlotClaim(*row) for row in (await session.execute(q)).all()]


async def sent_to_server(
    session: AsyncSession, round_id: uuid.UUID, stages: Sequence[str]
) -> dict[str, dict[int, dict[str, Any]]]:
    """Per stage, the payload of each participant's message to the server (its sender, and
    the small fields: keys, commitment), without the masked vectors."""
    q = select(FLSecAggMessage.stage, FLSecAggMessage.sender_index, FLSecAggMessage.payload).where(
        FLSecAggMessage.round_id == round_id,
        FLSecAggMessage.stage.in_(list(stages)),
        FLSecAggMessage.recipient_index.is_(None),
        FLSecAggMessage.sender_index.is_not(None),
    )
    out: dict[str, dict[int, dict[str, Any]]] = {stage: {} for stage in stages}
    for stage, sender, payload in (await session.execute(q)).all():
        out[stage][int(sender)] = dict(payload or {})
    return out


async def relayed_bundles(
    session: AsyncSession, round_id: uuid.UUID
) -> list[tuple[int, int, bytes]]:
    """Every sealed share bundle of the round: ``(sender, recipient, sealed)``."""
    q = select(
        FLSecAggMessage.sender_index, FLSecAggMessage.recipient_index, FLSecAggMessage.data
    ).where(
        FLSecAggMessage.round_id == round_id,
        FLSecAggMessage.stage == "share_keys",
        FLSecAggMessage.recipient_index.is_not(None),
    )
    return [
        (int(s), int(r), bytes(d or b""))
        for s, r, d in (await session.execute(q)).all()
        if s is not None and r is not None
    ]


async def messages(
    session: AsyncSession,
    round_id: uuid.UUID,
    stage: str | None,
    *,
    sender: int | None = None,
    recipient: int | None = None,
    to_server: bool = False,
) -> list[FLSecAggMessage]:
    """A stage's messages (``None``: every stage's), by sender; narrowed to one sender, one
    recipient, or those sent to the server itself (``to_server``: no recipient)."""
    q = select(FLSecAggMessage).where(FLSecAggMessage.round_id == round_id)
    if stage is not None:
        q = q.where(FLSecAggMessage.stage == stage)
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
