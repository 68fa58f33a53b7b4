"""All ledger SQL. Amounts are summed in Python (decimal TEXT on SQLite, ARCHITECTURE §2.1)."""

from __future__ import annotations

import uuid
import zlib
from datetime import datetime

from sqlalchemy import func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.pagination import Cursor, newest_first
from parity.ledger.models import Entry, Posting, Reservation, Settlement


async def lock_account(session: AsyncSession, account: str) -> None:
    """Serialize balance checks of one account for the rest of this transaction. PostgreSQL:
    a transaction-scoped advisory lock; SQLite writes are already serialized."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"parity.ledger.{account}".encode()) & 0x7FFFFFFF
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


async def open_reservation_amounts(session: AsyncSession, account: str) -> list[int]:
    q = select(Reservation.amount).where(
        Reservation.account == account, Reservation.status == "open"
    )
    return list((await session.scalars(q)).all())


async def unsettled_amounts(
    session: AsyncSession, account: str, *, settled_since: datetime
) -> list[tuple[int, datetime | None]]:
    """Signed amounts of the account's entries not yet settled on chain, and of those settled
    at or after ``settled_since`` (with their ``settled_at``), in one statement, so that an
    entry settling meanwhile is seen in one of the two states."""
    q = select(Entry.amount, Entry.settled_at).where(
        Entry.account == account,
        or_(Entry.settled_at.is_(None), Entry.settled_at >= settled_since),
    )
    return [(amount, settled_at) for amount, settled_at in (await session.execute(q)).all()]


async def settled_credit_amounts(session: AsyncSession, account: str) -> list[int]:
    q = select(Entry.amount).where(
        Entry.account == account, Entry.settled_at.is_not(None), Entry.amount > 0
    )
    return list((await session.scalars(q)).all())


async def add(session: AsyncSession, *rows: object) -> None:
    session.add_all(rows)
    await session.flush()


async def reservation_for(
    session: AsyncSession, source_type: str, source_id: str, *, lock: bool = False
) -> Reservation | None:
    q = select(Reservation).where(
        Reservation.source_type == source_type, Reservation.source_id == source_id
    )
    if lock:
        q = q.with_for_update()
    return (await session.scalars(q)).one_or_none()


async def any_open_reservation(session: AsyncSession) -> bool:
    q = select(Reservation.id).where(Reservation.status == "open").limit(1)
    return await session.scalar(q) is not None


async def posting_for(
    session: AsyncSession, source_type: str, source_id: str, kind: str
) -> Posting | None:
    q = select(Posting).where(
        Posting.source_type == source_type, Posting.source_id == source_id, Posting.kind == kind
    )
    return (await session.scalars(q)).one_or_none()


async def entries_of_posting(session: AsyncSession, posting_id: uuid.UUID) -> list[Entry]:
    q = select(Entry).where(Entry.posting_id == posting_id).order_by(Entry.amount)
    return list((await session.scalars(q)).all())


async def settlements_by_id(
    session: AsyncSession, ids: list[uuid.UUID]
) -> dict[uuid.UUID, Settlement]:
    if not ids:
        return {}
    rows = (await session.scalars(select(Settlement).where(Settlement.id.in_(ids)))).all()
    return {s.id: s for s in rows}


async def list_entries(
    session: AsyncSession, account: str, limit: int, after: Cursor | None
) -> list[tuple[Entry, Posting]]:
    q = select(Entry, Posting).join(Posting, Posting.id == Entry.posting_id)
    q = newest_first(q.where(Entry.account == account), Entry.created_at, Entry.id, after, limit)
    return [(e, p) for e, p in (await session.execute(q)).all()]


async def list_reservations(
    session: AsyncSession, account: str, status: str | None, limit: int, after: Cursor | None
) -> list[Reservation]:
    q = select(Reservation).where(Reservation.account == account)
    if status is not None:
        q = q.where(Reservation.status == status)
    q = newest_first(q, Reservation.created_at, Reservation.id, after, limit)
    return list((await session.scalars(q)).all())


async def list_payouts(
    session: AsyncSession, account: str, limit: int, after: Cursor | None
) -> list[Settlement]:
    q = select(Settlement).where(Settlement.payee == account)
    q = newest_first(q, Settlement.created_at, Settlement.id, after, limit)
    return list((await session.scalars(q)).all())


async def settlement_counts(session: AsyncSession) -> dict[str, int]:
    q = select(Settlement.status, func.count()).group_by(Settlement.status)
    return {str(status): int(n) for status, n in (await session.execute(q)).all()}
