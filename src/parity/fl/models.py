"""Federated-learning sessions, their participants, rounds and per-round participant slots
(ARCHITECTURE §4-§5). A participant-round owns exactly one ``fl_train`` task row; whether its
update arrived is stored on the slot, in the transaction that completes that task."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from parity.db.base import Base
from parity.db.types import TokenAmount


class FLSession(Base):
    """One training session. ``config``/``training_data`` hold the validated request in its
    canonical form; the global model lives in the content store (CID, sha256, shapes here)."""

    __tablename__ = "fl_sessions"
    __table_args__ = (Index("ix_fl_sessions_creator_created", "creator_address", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    creator_address: Mapped[str] = mapped_column(String(42))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    model_type: Mapped[str] = mapped_column(String(64))
    # pending | active | completed | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), index=True)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    current_round: Mapped[int] = mapped_column(Integer, default=0)
    total_rounds: Mapped[int] = mapped_column(Integer)
    min_participants: Mapped[int] = mapped_column(Integer)
    max_participants: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    training_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    # The held-out test split (NPZ in the content store) the server evaluates on, if any.
    test_cid: Mapped[str | None] = mapped_column(String(128))
    test_sha256: Mapped[str | None] = mapped_column(String(64))
    global_model_cid: Mapped[str | None] = mapped_column(String(128))
    global_model_sha256: Mapped[str | None] = mapped_column(String(64))
    global_model_round: Mapped[int | None] = mapped_column(Integer)
    model_shapes: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Server optimiser state of stateful aggregators (FedAdam, ...), safetensors in the store.
    opt_state_cid: Mapped[str | None] = mapped_column(String(128))
    reward_pool: Mapped[int | None] = mapped_column(TokenAmount)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class FLParticipant(Base):
    """A runner bound to a session under a participant index (its partition). A replacement
    between rounds takes over the index; the one it replaced is kept as ``replaced``."""

    __tablename__ = "fl_participants"
    __table_args__ = (
        Index("ix_fl_participants_session_index", "session_id", "participant_index"),
        Index("ix_fl_participants_runner", "runner_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("fl_sessions.id", ondelete="CASCADE"))
    runner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runners.id", ondelete="CASCADE"))
    participant_index: Mapped[int] = mapped_column(Integer)
    # active | replaced
    status: Mapped[str] = mapped_column(String(16))
    partition_cid: Mapped[str | None] = mapped_column(String(128))
    partition_sha256: Mapped[str | None] = mapped_column(String(64))
    num_examples: Mapped[int | None] = mapped_column(Integer)
    label_counts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    joined_at: Mapped[datetime]
    left_at: Mapped[datetime | None]


class FLRound(Base):
    """One round: ``collecting → aggregating → completed | failed`` (§5). ``metrics`` holds
    the round's figures once aggregated (participants, examples, losses, accuracies, times)."""

    __tablename__ = "fl_rounds"
    __table_args__ = (UniqueConstraint("session_id", "number"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("fl_sessions.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    participants: Mapped[int] = mapped_column(Integer)
    required_updates: Mapped[int] = mapped_column(Integer)
    # The global model the round trains from (round 1: the initial model).
    model_in_cid: Mapped[str] = mapped_column(String(128))
    model_in_sha256: Mapped[str] = mapped_column(String(64))
    model_out_cid: Mapped[str | None] = mapped_column(String(128))
    model_out_sha256: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    opened_at: Mapped[datetime]
    deadline_at: Mapped[datetime] = mapped_column(index=True)
    closed_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class FLRoundSlot(Base):
    """One participant in one round: its ``fl_train`` task and, once accepted, its update
    (a safetensors CID in the content store and the metrics it reported).
    ``status``: assigned | submitted | dropped."""

    __tablename__ = "fl_round_slots"
    __table_args__ = (
        UniqueConstraint("round_id", "participant_index"),
        Index("ix_fl_round_slots_task", "task_id", unique=True),
        Index("ix_fl_round_slots_runner", "runner_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    round_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("fl_rounds.id", ondelete="CASCADE"))
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("fl_sessions.id", ondelete="CASCADE"), index=True
    )
    participant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("fl_participants.id", ondelete="CASCADE")
    )
    participant_index: Mapped[int] = mapped_column(Integer)
    runner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runners.id", ondelete="CASCADE"))
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    update_cid: Mapped[str | None] = mapped_column(String(128))
    update_sha256: Mapped[str | None] = mapped_column(String(64))
    num_examples: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    training_time_ms: Mapped[int | None] = mapped_column(Integer)
    update_norm: Mapped[float | None] = mapped_column(Float)
    drop_reason: Mapped[str | None] = mapped_column(Text)
    submitted_at: Mapped[datetime | None]
