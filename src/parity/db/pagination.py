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
    if not value:
        return None
    try:
        ts, id_ = _unopaque(value).split("|", 1)
        return datetime.fromisoformat(ts), uuid.UUID(id_)
    except (ValueError, UnicodeDecodeError):
        raise _not_a_cursor() from None


def encode_keyed(kind: str, *parts: object) -> str:
    """An opaque cursor of a list with its own key (not ``created_at, id``): ``kind`` names
    the list, so a cursor of one list is refused by another."""
    return _opaque("|".join([kind, *(str(p) for p in parts)]))


def decode_keyed(value: str, kind: str, convert: Callable[[list[str]], K]) -> K:
    """The key of an :func:`encode_keyed` cursor of ``kind``, its parts converted by
    ``convert`` (which raises ValueError on a bad part); 422 naming ``cursor`` otherwise."""
    try:
        found, *parts = _unopaque(value).split("|")
        if found != kind:
            raise ValueError(found)
        return convert(parts)
    except (ValueError, UnicodeDecodeError):
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
