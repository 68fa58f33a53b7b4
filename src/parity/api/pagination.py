"""List conventions on the wire. New lists: ``{"items", "next_cursor", "limit"}`` ordered
``created_at DESC, id DESC`` with an opaque keyset cursor (the cursor and the queries are in
``parity.db.pagination``). Legacy bare-array paths use ``limit``/``offset`` and an
``X-Total-Count`` header."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

from parity.db.pagination import Cursor, Keyed, decode_cursor, next_cursor

T = TypeVar("T")

# The largest integer PostgreSQL's bigint and SQLite's INTEGER hold: the upper bound of every
# integer query or path parameter that reaches a query (offsets, sequence cursors, numbers).
BIGINT_MAX = 2**63 - 1


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None
    limit: int


class PageParams(BaseModel):
    limit: int
    cursor: Cursor | None


async def page_params(  # async: a plain def dependency runs in the thread pool
    limit: Annotated[int, Query(ge=1, le=200, description="Page size")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=decode_cursor(cursor))


def make_page(items: list[T], rows: Sequence[Keyed], limit: int) -> Page[T]:
    """The page of ``items`` built from ``rows`` (fetched with limit+1 by
    ``parity.db.pagination.newest_first``)."""
    return Page[T](items=items[:limit], next_cursor=next_cursor(rows, limit), limit=limit)


PageParamsDep = Annotated[PageParams, Depends(page_params)]
