"""Keyset pagination over ``created_at DESC, id DESC``: the cursor, its opaque text form and
the query helpers the repositories use. The HTTP side (query parameters, the page shape) lives
in ``parity.api.pagination``, so persistence code never imports the web layer."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from parity.db.types import to_utc
from parity.errors import InvalidInput

Q = TypeVar("Q", bound="Select[*tuple[Any, ...]]")
K = TypeVar("K")

Cursor = tuple[datetime, uuid.UUID]


class Keyed(Protocol):
    """A row a cursor can point at."""

    created_at: datetime
    id: uuid.UUID


def _opaque(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _unopaque(value: str) -> str:
    """The text of an :func:`_opaque` value; ValueError (or UnicodeDecodeError) if it is not one."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()


def _not_a_cursor() -> InvalidInput:
    return InvalidInput("cursor", "not a cursor returned by this list")


def encode_cursor(created_at: datetime, id_: uuid.UUID) -> str:
    return _opaque(f"{created_at.isoformat()}|{id_}")


def decode_cursor(value: str | None) -> Cursor | None:
    """The position an :func:`encode_cursor` text names; 422 naming ``cursor`` for any other
    text, a tampered one included (a timestamp without its offset, or one whose UTC time is
    outside years 1 to 9999, would otherwise fail only where the query binds it)."""
    if not value:
        return None
    try:
        ts, id_ = _unopaque(value).split("|", 1)
        return to_utc(datetime.fromisoformat(ts)), uuid.UUID(id_)
    except (ValueError, UnicodeDecodeError):
        raise _not_a_cursor() from None


def encode_keyed(kind: str, *parts: object) -> str:
    """An opaque cursor of a list with its own key (not ``created_at, id``): ``kind`` names
    the list, so a cursor of one list is refused by another."""
    return _opaque("|".join([kind, *(str(p) for p in parts)]))


# The integers of a keyed cursor are numbers and positions kept in INTEGER columns: bounded
# here to what PostgreSQL's integer holds, so both databases refuse a larger one alike.
KEY_INT_MAX = 2**31 - 1


def _check_part(part: object) -> None:
    """ValueError unless ``part`` of a decoded key can be bound as it is: a timestamp with its
    offset and within years 1 to 9999 in UTC, an integer from 0 to KEY_INT_MAX."""
    if isinstance(part, datetime):
        to_utc(part)
    elif isinstance(part, int) and not 0 <= part <= KEY_INT_MAX:
        raise ValueError(f"{part} is outside 0..{KEY_INT_MAX}")


def decode_keyed(value: str, kind: str, convert: Callable[[list[str]], K]) -> K:
    """The key of an :func:`encode_keyed` cursor of ``kind``, its parts converted by
    ``convert`` (which raises ValueError on a bad part); 422 naming ``cursor`` otherwise. The
    converted key (one value or a tuple) is checked here too, whatever ``convert`` does:
    timestamps must carry an offset and lie within years 1 to 9999 in UTC, integers within
    0..KEY_INT_MAX, so a tampered cursor is refused here and not where the query binds it."""
    try:
        found, *parts = _unopaque(value).split("|")
        if found != kind:
            raise ValueError(found)
        key = convert(parts)
        for part in key if isinstance(key, tuple) else (key,):
            _check_part(part)
        return key
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise _not_a_cursor() from None


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
