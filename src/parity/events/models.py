"""Events, webhook endpoints, the delivery outbox and its attempt log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from parity.db.base import Base

# BIGSERIAL on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is an autoincrementing rowid.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Event(Base):
    """One thing that happened to a resource. ``seq`` is the stream cursor of GET /events;
    ``id`` is the public id (the ``webhook-id`` of every delivery of this event)."""

    __tablename__ = "events"
    # AUTOINCREMENT on SQLite: a plain rowid is reused once the newest rows are pruned, which
    # would move the stream cursor backwards.
    __table_args__ = (
        Index("ix_events_owner_seq", "owner_address", "seq"),
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[uuid.UUID] = mapped_column(unique=True)
    type: Mapped[str] = mapped_column(String(40))
    owner_address: Mapped[str] = mapped_column(String(42))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(index=True)


class WebhookEndpoint(Base):
    """A subscription: where to POST which event types, with the secret that signs them."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_owner_created", "owner_address", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    owner_address: Mapped[str] = mapped_column(String(42))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(255))
    secret: Mapped[str] = mapped_column(String(80))
    # During a rotation the previous secret signs too, until it expires.
    previous_secret: Mapped[str | None] = mapped_column(String(80))
    previous_secret_expires_at: Mapped[datetime | None]
    event_types: Mapped[list[str]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[datetime | None]
    # Failed attempts since the last successful delivery. While it is above zero the endpoint
    # is "failing": ``failing_since`` is its first failure since that success, and one delivery
    # at a time is tried, not before ``next_attempt_at`` (the endpoint's own back-off). A
    # success clears all three.
    consecutive_failures: Mapped[int] = mapped_column(Integer)
    failing_since: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]


class WebhookDelivery(Base):
    """The outbox: one row per (event, endpoint), written in the event's transaction."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("events.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(index=True)


class WebhookDeliveryAttempt(Base):
    """One POST of a delivery: what came back and how long it took."""

    __tablename__ = "webhook_delivery_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "attempt"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
