"""Who receives an event: one pending delivery per enabled webhook endpoint of the event's
owner or of an operator that subscribes to the event's type. Written once, as one
``INSERT … SELECT`` over the endpoints, used by :func:`parity.events.service.emit` and by
statements that record an event themselves (the queue's completion on PostgreSQL)."""

from __future__ import annotations

from typing import Any
from typing import cast as type_cast

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    Insert,
    Table,
    bindparam,
    cast,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import String

from parity.events.models import WebhookDelivery, WebhookEndpoint

_ENDPOINTS = type_cast(Table, WebhookEndpoint.__table__)
_DELIVERIES = type_cast(Table, WebhookDelivery.__table__)
PENDING = "pending"


def _subscribed(event_type: Any, postgres: bool) -> ColumnElement[bool]:
    if postgres:
        has = _ENDPOINTS.c.event_types.cast(JSONB).op("?", return_type=Boolean)
        return has(cast(event_type, String))
    return exists(
        select(literal(1))
        .select_from(func.json_each(_ENDPOINTS.c.event_types).table_valued("value"))
        .where(literal_column("value") == event_type)
    )


def _new_id(postgres: bool) -> ColumnElement[Any]:
    if postgres:
        return func.gen_random_uuid()
    # 32 hex digits: how the UUID type stores ids on SQLite.
    return func.lower(func.hex(func.randomblob(16)))


def deliveries(event_id: Any, owner: Any, event_type: Any, now: Any, *, postgres: bool) -> Insert:
    """``INSERT INTO webhook_deliveries … SELECT`` one pending, due-now delivery per receiving
    endpoint, ``RETURNING`` one row per delivery. The operators' addresses bind as
    ``b_admins`` (a list)."""
    if postgres:
        admins = _ENDPOINTS.c.owner_address == func.any(bindparam("b_admins", type_=ARRAY(String)))
    else:
        # A JSON array read by json_each, not an expanding IN: SQLAlchemy re-renders a statement
        # with an expanding parameter on every execution (~0.5 ms for this one, on every event).
        listed = func.json_each(bindparam("b_admins", type_=JSON)).table_valued("value")
        admins = _ENDPOINTS.c.owner_address.in_(select(listed.c.value))
    receivers = select(
        _new_id(postgres),
        _ENDPOINTS.c.id,
        event_id,
        literal_column(f"'{PENDING}'"),
        literal_column("0"),
        now,
        now,
    ).where(
        _ENDPOINTS.c.enabled.is_(True),
        or_(_ENDPOINTS.c.owner_address == owner, admins),
        _subscribed(event_type, postgres),
    )
    cols = ["id", "endpoint_id", "event_id", "status", "attempts", "next_attempt_at", "created_at"]
    return insert(_DELIVERIES).from_select(cols, receivers).returning(_DELIVERIES.c.id)
