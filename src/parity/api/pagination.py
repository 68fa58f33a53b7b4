"""List conventions. New lists: ``{"items", "next_cursor", "limit"}`` ordered
``created_at DESC, id DESC`` with an opaque keyset cursor. Legacy bare-array paths use
``limit``/``offset`` and an ``X-Total-Count`` header."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, Protocol, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from parity.errors import InvalidInput

T = TypeVar("T")
Q = TypeVar("Q", bound="Select[*tuple[Any, ...]]")

Cursor = tuple[datetime, uuid.UUID]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None
    limit: int


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


class PageParams(BaseModel):
    limit: int
    cursor: Cursor | None


def page_params(
    limit: Annotated[int, Query(ge=1, le=200, description="Page size")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=decode_cursor(cursor))


class Keyed(Protocol):
    """A row a cursor can point at."""

    created_at: datetime
    id: uuid.UUID


def make_page(items: list[T], rows: Sequence[Keyed], limit: int) -> Page[T]:
    """The page of ``items`` built from ``rows``, which were fetched with limit+1 by
    :func:`newest_first`: the extra row only says there is a next page, whose cursor is the
    last row shown."""
    more = len(rows) > limit
    last = rows[limit - 1] if more else None
    cursor = encode_cursor(last.created_at, last.id) if last is not None else None
    return Page[T](items=items[:limit], next_cursor=cursor, limit=limit)


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
    the page (see :func:`make_page`)."""
    if cursor is not None:
        q = q.where(older_than(created_at, id_, cursor))
    return q.order_by(created_at.desc(), id_.desc()).limit(limit + 1)


PageParamsDep = Annotated[PageParams, Depends(page_params)]
