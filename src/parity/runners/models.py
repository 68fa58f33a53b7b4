from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from parity.db.base import Base


class Runner(Base):
    """A machine that does work. ``status`` is what the runner reported (online, draining,
    offline); ``busy`` is derived from its active claims and never stored."""

    __tablename__ = "runners"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(String(255), unique=True)
    owner_address: Mapped[str] = mapped_column(ForeignKey("accounts.address"), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret: Mapped[str | None] = mapped_column(String(80))
    cpu_cores: Mapped[float] = mapped_column(Float, default=0.0)
    memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    docker: Mapped[bool] = mapped_column(Boolean, default=False)
    fl: Mapped[bool] = mapped_column(Boolean, default=False)
    # Names of runner-local FL datasets the runner serves (sessions may train on them).
    fl_datasets: Mapped[list[str]] = mapped_column(JSON, default=list)
    max_concurrent_tasks: Mapped[int] = mapped_column(Integer, default=1)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    runner_version: Mapped[str | None] = mapped_column(String(40))
    cpu_usage: Mapped[float | None] = mapped_column(Float)
    memory_usage: Mapped[float | None] = mapped_column(Float)
    last_heartbeat: Mapped[datetime] = mapped_column(index=True)
    # Set by the owner or an operator; survives heartbeats and re-registration until resumed.
    drain_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    banned_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]


class RunnerModel(Base):
    """An LLM model a runner reports (loaded or available)."""

    __tablename__ = "runner_models"
    __table_args__ = (UniqueConstraint("runner_id", "model_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    runner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("runners.id", ondelete="CASCADE"), index=True
    )
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    is_loaded: Mapped[bool] = mapped_column(Boolean, default=False)
    max_tokens: Mapped[int] = mapped_column(Integer, default=4096)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime]
