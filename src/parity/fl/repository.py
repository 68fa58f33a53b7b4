"""SQL of the session API: sessions, their participants, rounds and per-round slot counts.
(The round machinery's own statements live in ``rounds_repository``.)"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.pagination import Cursor, newest_first
from parity.fl.models import FLParticipant, FLRound, FLRoundSlot, FLSession

OPEN_ROUND_STATUSES = ("collecting", "unmasking", "aggregating")
ACTIVE_PARTICIPANT = "active"


async def add(session: AsyncSession, *rows: Any) -> None:
    session.add_all(rows)
    await session.flush()


async def get_session(
    session: AsyncSession, session_id: uuid.UUID, *, lock: bool = False
) -> FLSession | None:
    q = select(FLSession).where(FLSession.id == session_id)
    if lock:
        # Read afresh under the row lock: a copy already in this unit of work could hide a
        # change committed while this one waited.
        q = q.with_for_update().execution_options(populate_existing=True)
    return (await session.scalars(q)).one_or_none()


async def list_sessions(
    session: AsyncSession, creator: str | None, cursor: Cursor | None, limit: int
) -> list[FLSession]:
    """Newest first, one row past the page; ``creator`` None lists everyone's."""
    q = select(FLSession)
    if creator is not None:
        q = q.where(FLSession.creator_address == creator)
    q = newest_first(q, FLSession.created_at, FLSession.id, cursor, limit)
    return list((await session.scalars(q)).all())


async def participant_counts(
    session: AsyncSession, session_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """Active (not replaced) participants per session."""
    if not session_ids:
        return {}
    q = (
        select(FLParticipant.session_id, func.count())
        .where(
            FLParticipant.session_id.in_(session_ids),
            FLParticipant.status == ACTIVE_PARTICIPANT,
        )
        .group_by(FLParticipant.session_id)
    )
    return {sid: int(n) for sid, n in (await session.execute(q)).all()}


# A participant's place in the list: (participant index, joined at, id).
ParticipantKey = tuple[int, datetime, uuid.UUID]


async def list_participants(
    session: AsyncSession,
    session_id: uuid.UUID,
    after: ParticipantKey | None = None,
    limit: int | None = None,
) -> list[FLParticipant]:
    """The participants (replaced ones too), by index, then by when they joined: those after
    ``after``, at most ``limit`` (every one when None)."""
    p = FLParticipant
    q = select(p).where(p.session_id == session_id)
    if after is not None:
        index, joined, id_ = after
        q = q.where(
            or_(
                p.participant_index > index,
                and_(p.participant_index == index, p.joined_at > joined),
                and_(p.participant_index == index, p.joined_at == joined, p.id > id_),
            )
        )
    q = q.order_by(p.participant_index, p.joined_at, p.id)
    if limit is not None:
        q = q.limit(limit)
    return list((await session.scalars(q)).all())


async def slot_counts_by_participant(
    session: AsyncSession, session_id: uuid.UUID, participant_ids: Sequence[uuid.UUID]
) -> dict[tuple[uuid.UUID, str], int]:
    """How many round slots of each status each of ``participant_ids`` holds."""
    q = (
        select(FLRoundSlot.participant_id, FLRoundSlot.status, func.count())
        .where(
            FLRoundSlot.session_id == session_id,
            FLRoundSlot.participant_id.in_(participant_ids),
        )
        .group_by(FLRoundSlot.participant_id, FLRoundSlot.status)
    )
    return {(pid, status): int(n) for pid, status, n in (await session.execute(q)).all()}


async def list_rounds(
    session: AsyncSession, session_id: uuid.UUID, before: int | None, limit: int
) -> list[FLRound]:
    """Newest (highest number) first, numbers below ``before``, one row past the page."""
    q = select(FLRound).where(FLRound.session_id == session_id)
    if before is not None:
        q = q.where(FLRound.number < before)
    q = q.order_by(FLRound.number.desc()).limit(limit + 1)
    return list((await session.scalars(q)).all())


async def get_round(session: AsyncSession, session_id: uuid.UUID, number: int) -> FLRound | None:
    q = select(FLRound).where(FLRound.session_id == session_id, FLRound.number == number)
    return (await session.scalars(q)).one_or_none()


async def rounds_in_order(session: AsyncSession, session_id: uuid.UUID) -> list[FLRound]:
    q = select(FLRound).where(FLRound.session_id == session_id).order_by(FLRound.number)
    return list((await session.scalars(q)).all())


async def slot_counts(
    session: AsyncSession, round_ids: Sequence[uuid.UUID]
) -> dict[tuple[uuid.UUID, str], int]:
    """How many slots of each status (assigned | submitted | dropped) each round has."""
    if not round_ids:
        return {}
    q = (
        select(FLRoundSlot.round_id, FLRoundSlot.status, func.count())
        .where(FLRoundSlot.round_id.in_(round_ids))
        .group_by(FLRoundSlot.round_id, FLRoundSlot.status)
    )
    return {(rid, status): int(n) for rid, status, n in (await session.execute(q)).all()}


async def open_rounds(session: AsyncSession, session_id: uuid.UUID) -> list[FLRound]:
    """The session's rounds still collecting or aggregating, locked."""
    q = (
        select(FLRound)
        .where(FLRound.session_id == session_id, FLRound.status.in_(OPEN_ROUND_STATUSES))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list((await session.scalars(q)).all())
