"""Prompts and per-runner latency (ARCHITECTURE §4-§6). A prompt owns exactly one ``llm`` task
row (same id); its status is read from that row, never stored twice."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from parity.db.base import Base
from parity.db.types import TokenAmount


class Prompt(Base):
    """One prompt. ``price`` is the routed runner's price, snapshotted at dispatch (billing
    uses it); ``usage``/``cost``/``latency_ms`` are filled once its task completes."""

    __tablename__ = "llm_prompts"
    __table_args__ = (Index("ix_llm_prompts_creator_created", "creator_address", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    task_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), unique=True
    )
    creator_address: Mapped[str] = mapped_column(String(42))
    model: Mapped[str] = mapped_column(String(256))
    # The canonical llm config (what the task row carries and the runner receives).
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The client's ceiling per 1k tokens ({"input_per_1k"?, "output_per_1k"?}), when given.
    max_price: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # With pricing on: the most this prompt may be billed per 1k tokens (what escrow holds).
    reserved_price: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reserved: Mapped[int | None] = mapped_column(TokenAmount)
    price: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    routed_runner_id: Mapped[uuid.UUID | None]
    routed_at: Mapped[datetime | None]
    # Why the last routing found no runner (core.llm.routing.NoRouteReason), for the deadline's
    # reason; cleared when routed.
    no_route_reason: Mapped[str | None] = mapped_column(String(32))
    deadline_at: Mapped[datetime]
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cost: Mapped[int | None] = mapped_column(TokenAmount)
    # Reported counts, estimates and flags of metering (core.llm.metering.Metered).
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    metered_at: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[datetime]


class RunnerModelStats(Base):
    """Latency EWMA of one runner serving one model (routing's second key), updated at each
    completed prompt."""

    __tablename__ = "llm_runner_stats"

    runner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("runners.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    latency_ewma_ms: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime]
