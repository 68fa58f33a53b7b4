"""The statements of an accepted model update, defined once in SQLAlchemy Core (compiled once,
bound per call): the round's state read under a share lock (PostgreSQL), the slot's
conditional move to ``submitted`` and the count of slots still waiting. Every update of every
round runs them, so they skip the ORM's per-call statement building and entity loading."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parity.fl.models import FLRound, FLRoundSlot

ROUNDS = cast(Table, FLRound.__table__)
SLOTS = cast(Table, FLRoundSlot.__table__)

ASSIGNED = "assigned"
SUBMITTED = "submitted"

_ROUND_STATE = select(ROUNDS.c.status, ROUNDS.c.deadline_at, ROUNDS.c.number).where(
    ROUNDS.c.id == bindparam("round_id")
)
# Shared: the updates of one round are accepted side by side; a close (which locks the round
# for update) waits for them, and they for it. SQLite serializes writes and has no row locks.
_ROUND_STATE_SHARED = _ROUND_STATE.with_for_update(read=True)

_SUBMIT = (
    update(SLOTS)
    .where(
        SLOTS.c.round_id == bindparam("b_round_id"),
        SLOTS.c.runner_id == bindparam("b_runner_id"),
        SLOTS.c.status == ASSIGNED,
    )
    .values(
        status=SUBMITTED,
        update_cid=bindparam("b_cid", type_=SLOTS.c.update_cid.type),
        update_sha256=bindparam("b_sha256", type_=SLOTS.c.update_sha256.type),
        update_norm=bindparam("b_norm", type_=SLOTS.c.update_norm.type),
        num_examples=bindparam("b_examples", type_=SLOTS.c.num_examples.type),
        loss=bindparam("b_loss", type_=SLOTS.c.loss.type),
        accuracy=bindparam("b_accuracy", type_=SLOTS.c.accuracy.type),
        training_time_ms=bindparam("b_training_ms", type_=SLOTS.c.training_time_ms.type),
        submitted_at=bindparam("b_at", type_=SLOTS.c.submitted_at.type),
    )
    .returning(SLOTS.c.participant_index)
)

_WAITING = (
    select(func.count())
    .select_from(SLOTS)
    .where(SLOTS.c.round_id == bindparam("round_id"), SLOTS.c.status == ASSIGNED)
)


@dataclass(frozen=True)
class RoundState:
    status: str
    deadline_at: datetime
    number: int


@dataclass(frozen=True)
class Submitted:
    """What the slot records of an accepted update."""

    cid: str
    sha256: str
    norm: float
    examples: int
    loss: float
    accuracy: float
    training_time_ms: int
    at: datetime


async def round_state(
    session: AsyncSession, round_id: uuid.UUID, *, shared: bool
) -> RoundState | None:
    """The round's status, deadline and number (share-locked when ``shared``)."""
    stmt = _ROUND_STATE_SHARED if shared else _ROUND_STATE
    row = (await session.execute(stmt, {"round_id": round_id})).first()
    return None if row is None else RoundState(row[0], row[1], row[2])


async def submit_slot(
    session: AsyncSession, round_id: uuid.UUID, runner_id: uuid.UUID, done: Submitted
) -> int | None:
    """Move the runner's waiting slot of the round to ``submitted`` with its update; its
    participant index, or None when the slot was not waiting (dropped, or submitted already)."""
    params: dict[str, Any] = {
        "b_round_id": round_id,
        "b_runner_id": runner_id,
        "b_cid": done.cid,
        "b_sha256": done.sha256,
        "b_norm": done.norm,
        "b_examples": done.examples,
        "b_loss": done.loss,
        "b_accuracy": done.accuracy,
        "b_training_ms": done.training_time_ms,
        "b_at": done.at,
    }
    row = (await session.execute(_SUBMIT, params)).first()
    return None if row is None else int(row[0])


async def waiting_count(session: AsyncSession, round_id: uuid.UUID) -> int:
    """Slots of the round still waiting for their update."""
    return int((await session.execute(_WAITING, {"round_id": round_id})).scalar_one())
