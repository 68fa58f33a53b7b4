"""Wire shapes of webhook subscriptions, deliveries and the event stream."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

# Every event a subscription may name (README "Webhooks" says when each is emitted).
EVENT_TYPES: tuple[str, ...] = (
    "task.created",
    "task.offered",
    "task.completed",
    "task.retrying",
    "task.failed",
    "task.cancelled",
    "prompt.completed",
    "prompt.failed",
    "fl.session.started",
    "fl.round.completed",
    "fl.session.completed",
    "fl.session.failed",
    "runner.offline",
    "payment.settled",
    "payment.reverted",
)


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2048, description="http(s) URL to POST events to")
    events: list[str] = Field(min_length=1, max_length=len(EVENT_TYPES))
    description: str | None = Field(None, max_length=255)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, min_length=1, max_length=2048)
    events: list[str] | None = Field(None, min_length=1, max_length=len(EVENT_TYPES))
    description: str | None = Field(None, max_length=255)
    enabled: StrictBool | None = Field(
        None,
        description="true re-enables, resets the breaker and the back-off, and sends what is "
        "pending at once",
    )


class WebhookRead(BaseModel):
    id: uuid.UUID
    owner_address: str
    url: str
    description: str | None
    events: list[str]
    enabled: bool
    disabled_reason: str | None = Field(
        description="why it is disabled (by its owner, or the circuit breaker and since when "
        "it failed); null while enabled"
    )
    disabled_at: datetime | None = Field(None, description="when it was disabled")
    consecutive_failures: int = Field(description="failed attempts since the last success")
    failing_since: datetime | None = Field(
        None, description="the first failed attempt since the last success; null when healthy"
    )
    next_attempt_at: datetime | None = Field(
        None,
        description="while failing: when the endpoint is tried next (one delivery at a time, "
        "backing off); null when healthy",
    )
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookRead):
    secret: str = Field(description="Signing secret (whsec_...): shown only here")


class SecretRotated(BaseModel):
    id: uuid.UUID
    secret: str = Field(description="The new signing secret: shown only here")
    previous_secret_expires_at: datetime


class DeliveryAttemptRead(BaseModel):
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    created_at: datetime


class DeliveryRead(BaseModel):
    id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    attempt_log: list[DeliveryAttemptRead]


class EventRead(BaseModel):
    """The envelope every delivery carries, plus the stream cursor ``seq``."""

    seq: int
    id: uuid.UUID
    type: str
    created_at: datetime
    data: dict[str, Any]


class EventsRead(BaseModel):
    items: list[EventRead]
    next_after: int
