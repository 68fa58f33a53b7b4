"""Keyset pagination over ``created_at DESC, id DESC``: the cursor, its opaque text form and
the query helpers the repositories use. The HTTP side (query parameters, the page shape) lives
in ``parity.api.pagination``, so persistence code never imports the web layer."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from parity.errors import InvalidInput

Q = TypeVar("Q", bound="Select[*tuple[Any, ...]]")

Cursor = tuple[datetime, uuid.UUID]


class Keyed(Protocol):
    """A row a cursor can point at."""

    created_at: datetime
    id: uuid.UUID


def encode_cursor(created_at: datetime, id_: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{id_}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str | None) -> Cursor | None:
    if not value:
        return None
    try:
        padded = value + "=" * (-len(value) % 4)
        ts, id_ = base64.urlsafe_b64decode(padded).decode().split("|", 1)
        return datetime.fromisoformat(ts), uuid.UUID(id_)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("cursor", "not a cursor returned by this list") from None


def next_cursor(rows: Sequence[Keyed], limit: int) -> str | None:
    """The cursor of the page after ``rows``, which were fetched with limit+1 by
    :func:`newest_first`: the extra row only says there is a next page, which starts after
    the last row shown. None on the last page."""
    if len(rows) <= limit:
        return None
    last = rows[limit - 1]
    return encode_cursor(last.created_at, last.id)


def older_than(
    created_at: InstrumentedAttribute[datetime],
    id_: InstrumentedAttribute[uuid.UUID],
    cursor: Cursor,
) -> ColumnElement[bool]:
    """The keyset predicate: rows after ``cursor`` in ``created_at DESC, id DESC`` order."""
    ts, last = cursor
    return or_(created_at < ts, and_(created_at == ts, id_ < last))


def newest_first(
    q: Q,
    created_at: InstrumentedAttribute[datetime],
    id_: InstrumentedAttribute[uuid.UUID],
    cursor: Cursor | None,
    limit: int,
) -> Q:
    """``q`` ordered ``created_at DESC, id DESC``, after ``cursor``, fetching one row past
    the page (see :func:`next_cursor`)."""
    if cursor is not None:
        q = q.where(older_than(created_at, id_, cursor))
    return q.order_by(created_at.desc(), id_.desc()).limit(limit + 1)
