"""The statements of a model update, defined once in SQLAlchemy Core (compiled once, bound per
call): what the update is checked against (the round, its session's settings, the caller's
slot, its partition size and its task's claim, in one read), the round's state read under a
share lock (PostgreSQL), the slot's conditional move to ``submitted``, the count of slots
still waiting, and the example count a runner-local participant's first update fixes. Every
update of every round runs them, so they skip the ORM's per-call statement building and entity
loading."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from parity.fl.models import FLParticipant, FLRound, FLRoundSlot, FLSession
from parity.tasks.queue.executors import Executor
from parity.tasks.queue.statements import TASKS

ROUNDS = cast(Table, FLRound.__table__)
SLOTS = cast(Table, FLRoundSlot.__table__)
SESSIONS = cast(Table, FLSession.__table__)
PARTICIPANTS = cast(Table, FLParticipant.__table__)

ASSIGNED = "assigned"
SUBMITTED = "submitted"

_TARGET = (
    select(
        ROUNDS.c.id,
        ROUNDS.c.session_id,
        ROUNDS.c.number,
        ROUNDS.c.status,
        ROUNDS.c.deadline_at,
        ROUNDS.c.model_in_cid,
        ROUNDS.c.model_in_sha256,
        SESSIONS.c.config.label("session_config"),
        SESSIONS.c.model_type.label("session_model_type"),
        SESSIONS.c.model_shapes.label("session_model_shapes"),
        SESSIONS.c.training_data.label("session_training_data"),
        SLOTS.c.id.label("slot_id"),
        SLOTS.c.status.label("slot_status"),
        SLOTS.c.task_id.label("slot_task_id"),
        SLOTS.c.participant_id.label("slot_participant_id"),
        SLOTS.c.participant_index.label("slot_participant_index"),
        SLOTS.c.update_cid.label("slot_update_cid"),
        SLOTS.c.update_sha256.label("slot_update_sha256"),
        SLOTS.c.update_norm.label("slot_update_norm"),
        SLOTS.c.drop_reason.label("slot_drop_reason"),
        SLOTS.c.num_examples.label("slot_examples"),
        SLOTS.c.loss.label("slot_loss"),
        SLOTS.c.accuracy.label("slot_accuracy"),
        SLOTS.c.training_time_ms.label("slot_training_ms"),
        PARTICIPANTS.c.num_examples.label("partition_rows"),
        TASKS.c.claim_token_hash.label("task_token_hash"),
        TASKS.c.status.label("task_status"),
        TASKS.c.runner_id.label("task_runner_id"),
    )
    .select_from(
        ROUNDS.join(SESSIONS, SESSIONS.c.id == ROUNDS.c.session_id)
        .outerjoin(
            SLOTS,
            and_(SLOTS.c.round_id == ROUNDS.c.id, SLOTS.c.runner_id == bindparam("runner_id")),
        )
        .outerjoin(PARTICIPANTS, PARTICIPANTS.c.id == SLOTS.c.participant_id)
        .outerjoin(TASKS, TASKS.c.id == SLOTS.c.task_id)
    )
    .where(ROUNDS.c.id == bindparam("round_id"))
)

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

# A runner-local participant's count, fixed once by its first accepted update.
_FIX_COUNT = (
    update(PARTICIPANTS)
    .where(
        PARTICIPANTS.c.id == bindparam("b_participant_id"),
        PARTICIPANTS.c.num_examples.is_(None),
    )
    .values(num_examples=bindparam("b_examples", type_=PARTICIPANTS.c.num_examples.type))
    .returning(PARTICIPANTS.c.id)  # run as rows(): every executor's path has it
)

_WAITING = (
    select(func.count())
    .select_from(SLOTS)
    .where(SLOTS.c.round_id == bindparam("round_id"), SLOTS.c.status == ASSIGNED)
)


@dataclass(frozen=True)
class RoundView:
    """The round's columns an update is checked against."""

    id: uuid.UUID
    session_id: uuid.UUID
    number: int
    status: str
    deadline_at: datetime
    model_in_cid: str
    model_in_sha256: str


@dataclass(frozen=True)
class SlotView:
    """The caller's slot in the round."""

    id: uuid.UUID
    status: str
    task_id: uuid.UUID
    participant_index: int
    update_cid: str | None
    update_sha256: str | None
    update_norm: float | None
    drop_reason: str | None
    # What an accepted update reported: (examples counted, loss, accuracy, training time).
    figures: tuple[int | None, float | None, float | None, int | None] = (None, None, None, None)
    participant_id: uuid.UUID | None = None


@dataclass(frozen=True)
class UpdateTarget:
    """What an update needs to be checked (see :func:`update_target`)."""

    round: RoundView
    session: FLSession  # transient: id, config, training_data, model_type, model_shapes only
    slot: SlotView | None  # None: the runner is not a participant of the round
    # The participant's count bound: its partition's rows, or (runner-local data) the count
    # its first accepted update fixed; None before that.
    partition_rows: int | None
    task_token_hash: str | None  # the slot's task: its current claim
    task_status: str | None
    task_runner_id: uuid.UUID | None


async def update_target(
    conn: AsyncConnection, round_id: uuid.UUID, runner_id: uuid.UUID
) -> UpdateTarget | None:
    """The round, its session's settings, the runner's slot in it, that participant's
    partition size and the slot task's current claim (so a valid claim token is recognised
    without a second query), in one statement."""
    r = (await conn.execute(_TARGET, {"round_id": round_id, "runner_id": runner_id})).first()
    if r is None:
        return None
    round_ = RoundView(
        r.id, r.session_id, r.number, r.status, r.deadline_at, r.model_in_cid, r.model_in_sha256
    )
    settings = FLSession(
        id=r.session_id,
        config=r.session_config,
        training_data=r.session_training_data,
        model_type=r.session_model_type,
        model_shapes=r.session_model_shapes,
    )
    slot = None
    if r.slot_id is not None:
        slot = SlotView(
            r.slot_id,
            r.slot_status,
            r.slot_task_id,
            r.slot_participant_index,
            r.slot_update_cid,
            r.slot_update_sha256,
            r.slot_update_norm,
            r.slot_drop_reason,
            (r.slot_examples, r.slot_loss, r.slot_accuracy, r.slot_training_ms),
            r.slot_participant_id,
        )
    return UpdateTarget(
        round_,
        settings,
        slot,
        r.partition_rows,
        r.task_token_hash,
        r.task_status,
        r.task_runner_id,
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


async def round_state(x: Executor, round_id: uuid.UUID, *, shared: bool) -> RoundState | None:
    """The round's status, deadline and number (share-locked when ``shared``)."""
    stmt = _ROUND_STATE_SHARED if shared else _ROUND_STATE
    rows = await x.rows(stmt, {"round_id": round_id})
    return None if not rows else RoundState(rows[0][0], rows[0][1], rows[0][2])


async def submit_slot(
    x: Executor, round_id: uuid.UUID, runner_id: uuid.UUID, done: Submitted
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
    rows = await x.rows(_SUBMIT, params)
    return None if not rows else int(rows[0][0])


async def waiting_count(x: Executor, round_id: uuid.UUID) -> int:
    """Slots of the round still waiting for their update."""
    return int((await x.rows(_WAITING, {"round_id": round_id}))[0][0])


async def fix_first_count(x: Executor, participant_id: uuid.UUID, examples: int) -> None:
    """Record ``examples`` as the participant's count unless one is recorded already (a
    runner-local participant's first accepted update; :mod:`parity.fl.examples`)."""
    await x.rows(_FIX_COUNT, {"b_participant_id": participant_id, "b_examples": examples})
