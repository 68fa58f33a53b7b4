"""Column types shared by every domain: UTC timestamps and exact token amounts; and the input
types the request schemas use so that a value is checked against what these columns hold where
the request is validated (the 422 names the field on SQLite and PostgreSQL alike, instead of a
500, or a database error naming nothing, once the value is bound):

- :data:`UtcDatetime`: a timestamp with its offset, within years 1 to 9999 once converted to
  UTC (``9999-12-31T20:00:00-05:00`` is past them), given back in UTC;
- :data:`NameText`: a name or label: one line of text, without NUL or any other control
  character (PostgreSQL's text refuses NUL; SQLite would keep it);
- :data:`INT32_MAX`: the largest value of an INTEGER column on PostgreSQL, the bound of a query
  or path integer compared with one.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator
from sqlalchemy import DateTime, Dialect, Numeric, String
from sqlalchemy.exc import DontWrapMixin
from sqlalchemy.types import TypeDecorator, TypeEngine

from parity.errors import InvalidInput
from parity.logging import get_logger

log = get_logger("parity.db")


def to_utc(value: datetime) -> datetime:
    """``value`` in UTC; ValueError saying why when it has no UTC equivalent: it carries no
    offset (a local time of nowhere), or its UTC time falls outside years 1 to 9999 (Python's
    range: ``9999-12-31T20:00:00-05:00`` is past it)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must carry a timezone (UTC ISO-8601)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range: in UTC it is before year 1 or after year 9999") from None


UtcDatetime = Annotated[datetime, AfterValidator(to_utc)]

INT32_MAX = 2**31 - 1

# C0 controls (NUL, tab, line breaks, escape), DEL and the C1 controls: Unicode's "Cc".
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_name(value: str) -> str:
    """``value`` unless it holds a control character: ValueError naming the first one."""
    found = _CONTROL.search(value)
    if found is not None:
        char = found.group()
        what = "NUL" if char == "\x00" else f"U+{ord(char):04X}"
        raise ValueError(
            f"must not contain control characters ({what} at position {found.start()})"
        )
    return value


NameText = Annotated[str, AfterValidator(check_name)]


class TimestampRefused(InvalidInput, DontWrapMixin):
    """A timestamp a UTC column cannot hold, met where it is bound: the API's own checks name
    the field first (see ``to_utc``); this is the answer, 422 and never a 500, for one that
    got past them. SQLAlchemy raises it as it is (``DontWrapMixin``), not as a StatementError."""


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python; `timestamptz` on PostgreSQL, ISO text on SQLite.

    Naive datetimes are refused on the way in so that no local time ever reaches the database,
    and so are those with no UTC equivalent (:func:`to_utc`), as :class:`TimestampRefused`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        try:
            value = to_utc(value)
        except ValueError as exc:
            log.warning("timestamp_refused", value=repr(value), reason=str(exc))
            raise TimestampRefused("timestamp", f"{value.isoformat()} {exc}") from None
        if dialect.name == "sqlite":
            # SQLite keeps text; store naive UTC so lexical order equals time order.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class TokenAmount(TypeDecorator[int]):
    """An integer amount in the token's base unit (18 decimals overflow int64 at 9.22 tokens).

    NUMERIC(78,0) on PostgreSQL (uint256 fits in 78 digits); decimal TEXT on SQLite, where money
    is therefore never summed in SQL.
    """

    impl = String(80)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(78, 0))
        return dialect.type_descriptor(String(80))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("token amounts are Python ints in base units")
        if dialect.name == "postgresql":
            return Decimal(value)
        return str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int(value)
