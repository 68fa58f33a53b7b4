from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
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


class Task(Base):
    """One row per unit of runner work (command, docker, llm, fl_train): one queue for all."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_queue", "status", "priority", "available_at"),
        Index("ix_tasks_lease", "status", "lease_expires_at"),
        Index("ix_tasks_creator_created", "creator_address", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(20))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Requirements, as columns so the claim can filter on them in SQL.
    req_cpu_cores: Mapped[float] = mapped_column(Float, default=0.0)
    req_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    req_gpus: Mapped[int] = mapped_column(Integer, default=0)
    req_docker: Mapped[bool] = mapped_column(Boolean, default=False)
    required_labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    creator_address: Mapped[str] = mapped_column(String(42))
    nonce: Mapped[str] = mapped_column(String(64))
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Claims given back untouched (graceful shutdown): they do not use up the retry budget.
    releases: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[datetime]
    target_runner_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    offer_expires_at: Mapped[datetime | None]
    runner_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    claim_token_hash: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    log_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class TaskExclusion(Base):
    """A runner that failed a task does not get it again."""

    __tablename__ = "task_exclusions"

    task_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    runner_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)


class TaskAttempt(Base):
    """One claim of a task: who, when, how it ended. The claim token is bound to it."""

    __tablename__ = "task_attempts"
    __table_args__ = (UniqueConstraint("task_id", "attempt"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    task_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    runner_id: Mapped[uuid.UUID] = mapped_column(index=True)
    claim_token_hash: Mapped[str] = mapped_column(String(64), index=True)
    claimed_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(20))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class TaskResult(Base):
    """The one accepted result of a task (from the accepted attempt)."""

    __tablename__ = "task_results"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    task_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), unique=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    runner_id: Mapped[uuid.UUID]
    output: Mapped[str | None] = mapped_column(Text)
    output_cid: Mapped[str | None] = mapped_column(String(120))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    result_hash: Mapped[str | None] = mapped_column(String(128))
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    execution_seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime]


class TaskLog(Base):
    """A chunk of log lines; idempotent on (task, attempt, seq)."""

    __tablename__ = "task_logs"
    __table_args__ = (UniqueConstraint("task_id", "attempt", "seq"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    lines: Mapped[list[str]] = mapped_column(JSON)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]


class RunnerPush(Base):
    """Outbox of signed ``task.offered`` pushes to runners' webhook URLs (retried by a job)."""

    __tablename__ = "runner_pushes"
    __table_args__ = (Index("ix_runner_pushes_due", "delivered_at", "next_attempt_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    runner_id: Mapped[uuid.UUID] = mapped_column(index=True)
    task_id: Mapped[uuid.UUID]
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    abandoned_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


# The claim's candidate order, over pending rows only: without it PostgreSQL scans and sorts the
# whole pending queue on every claim (8 ms at 2,000 pending, 49 ms at 10,000; 0.09 ms with it).
Index(
    "ix_tasks_pending_order",
    Task.priority.desc(),
    Task.available_at,
    Task.id,
    postgresql_where=Task.status == "pending",
    sqlite_where=Task.status == "pending",
)
