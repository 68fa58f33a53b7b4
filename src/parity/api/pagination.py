"""List conventions. New lists: ``{"items", "next_cursor", "limit"}`` ordered
``created_at DESC, id DESC`` with an opaque keyset cursor. Legacy bare-array paths use
``limit``/``offset`` and an ``X-Total-Count`` header."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

from parity.errors import InvalidInput

T = TypeVar("T")

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


def make_page(rows: list[T], limit: int, key: Cursor | None) -> Page[T]:
    """``rows`` were fetched with limit+1; the extra row only says there is a next page."""
    more = len(rows) > limit
    return Page[T](items=rows[:limit], next_cursor=_enc(key) if more and key else None, limit=limit)


def _enc(key: Cursor) -> str:
    return encode_cursor(*key)


PageParamsDep = Annotated[PageParams, Depends(page_params)]
