"""All SQL of the settlement worker. Amounts are summed in Python (TEXT on SQLite, §6).

Every state change is a conditional UPDATE on the expected status, so a step repeated after a
crash, or by a second worker that slipped past the advisory lock, changes nothing twice."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.pagination import Cursor, newest_first
from parity.ledger.models import Entry, Settlement, SettlementTx, SignerNonce

CREDIT_ROLES = ("payee", "protocol")
PENDING, SIGNED, BROADCAST, MINED = "pending", "signed", "broadcast", "mined"
CONFIRMED, REVERTED, FAILED = "confirmed", "reverted", "failed"
RELEASED = "released"  # a failed one whose entries an operator returned to unsettled
IN_FLIGHT = (SIGNED, BROADCAST)


def _count(res: Any) -> int:
    return int(getattr(res, "rowcount", 0))


# -- intents ---------------------------------------------------------------------------------


async def unsettled_credits(session: AsyncSession, limit: int) -> Sequence[Entry]:
    """Credits that no settlement covers yet, oldest first."""
    q = (
        select(Entry)
        .where(
            Entry.settlement_id.is_(None),
            Entry.settled_at.is_(None),
            Entry.role.in_(CREDIT_ROLES),
            Entry.counterparty.is_not(None),
        )
        .order_by(Entry.created_at, Entry.id)
        .limit(limit)
    )
    return (await session.scalars(q)).all()


async def add_settlement(session: AsyncSession, settlement: Settlement) -> None:
    session.add(settlement)
    await session.flush()


async def attach_entries(
    session: AsyncSession, settlement_id: uuid.UUID, entry_ids: Sequence[uuid.UUID]
) -> int:
    """Point still-unattached entries at the settlement; returns how many were attached."""
    res = await session.execute(
        update(Entry)
        .where(Entry.id.in_(list(entry_ids)), Entry.settlement_id.is_(None))
        .values(settlement_id=settlement_id)
    )
    return _count(res)


async def settle_entries(session: AsyncSession, settlement_id: uuid.UUID, now: datetime) -> int:
    """Mark the settlement's credits settled, then each payer debit whose posting has no
    unsettled credit left."""
    res = await session.execute(
        update(Entry)
        .where(Entry.settlement_id == settlement_id, Entry.settled_at.is_(None))
        .values(settled_at=now)
    )
    postings = select(Entry.posting_id).where(Entry.settlement_id == settlement_id).distinct()
    open_credit = (
        select(Entry.id)
        .where(
            Entry.posting_id.in_(postings),
            Entry.role.in_(CREDIT_ROLES),
            Entry.settled_at.is_(None),
        )
        .subquery()
    )
    still_open = select(Entry.posting_id).where(Entry.id.in_(select(open_credit.c.id)))
    await session.execute(
        update(Entry)
        .where(
            Entry.posting_id.in_(postings),
            Entry.posting_id.not_in(still_open),
            Entry.role == "payer",
            Entry.settled_at.is_(None),
        )
        .values(settled_at=now)
    )
    return _count(res)


async def release_entries(session: AsyncSession, settlement_id: uuid.UUID) -> int:
    """Detach the entries of a settlement whose transaction moved nothing (reverted, or failed
    and released by an operator)."""
    res = await session.execute(
        update(Entry)
        .where(Entry.settlement_id == settlement_id, Entry.settled_at.is_(None))
        .values(settlement_id=None)
    )
    return _count(res)


# -- settlements and their transactions -----------------------------------------------------


async def by_status(session: AsyncSession, statuses: Sequence[str]) -> Sequence[Settlement]:
    q = (
        select(Settlement)
        .where(Settlement.status.in_(list(statuses)))
        .order_by(Settlement.created_at, Settlement.id)
    )
    return (await session.scalars(q)).all()


async def get(
    session: AsyncSession, settlement_id: uuid.UUID, *, lock: bool = False
) -> Settlement | None:
    q = select(Settlement).where(Settlement.id == settlement_id)
    if lock:
        q = q.with_for_update()
    return (await session.scalars(q)).first()


async def newest(
    session: AsyncSession, status: str | None, limit: int, after: Cursor | None
) -> list[Settlement]:
    """Every settlement (of one status), newest first, for operators."""
    q = select(Settlement)
    if status is not None:
        q = q.where(Settlement.status == status)
    q = newest_first(q, Settlement.created_at, Settlement.id, after, limit)
    return list((await session.scalars(q)).all())


async def in_flight_amount(session: AsyncSession, payer: str) -> int:
    """What the payer's signed but not yet mined settlements will take from its stake."""
    amounts = await session.scalars(
        select(Settlement.amount).where(
            Settlement.payer == payer, Settlement.status.in_(list(IN_FLIGHT))
        )
    )
    return sum(amounts.all())


async def transition(
    session: AsyncSession,
    settlement_id: uuid.UUID,
    expected: str | Sequence[str],
    **values: Any,
) -> bool:
    """Set ``values`` on the settlement if its status is still ``expected``."""
    allowed = [expected] if isinstance(expected, str) else list(expected)
    res = await session.execute(
        update(Settlement)
        .where(Settlement.id == settlement_id, Settlement.status.in_(allowed))
        .values(**values)
    )
    return _count(res) == 1


async def transactions(session: AsyncSession, settlement_id: uuid.UUID) -> Sequence[SettlementTx]:
    """The settlement's signed transactions, oldest first (later ones are fee bumps)."""
    q = (
        select(SettlementTx)
        .where(SettlementTx.settlement_id == settlement_id)
        .order_by(SettlementTx.created_at, SettlementTx.id)
    )
    return (await session.scalars(q)).all()


async def add_transaction(session: AsyncSession, tx: SettlementTx) -> None:
    session.add(tx)
    await session.flush()


async def nonce_holders(
    session: AsyncSession, sender: str, low: int, high: int
) -> Sequence[tuple[int, str, str | None]]:
    """``(nonce, status, tx_hash)`` of the settlements whose stored transactions from
    ``sender`` use a nonce in ``[low, high)``; ``tx_hash`` is the settlement's (the mined one,
    once mined)."""
    q = (
        select(SettlementTx.nonce, Settlement.status, Settlement.tx_hash)
        .join(Settlement, Settlement.id == SettlementTx.settlement_id)
        .where(
            SettlementTx.sender == sender,
            SettlementTx.nonce >= low,
            SettlementTx.nonce < high,
        )
        .order_by(SettlementTx.nonce)
    )
    return [(int(n), str(status), h) for n, status, h in (await session.execute(q)).all()]


async def mark_broadcast(session: AsyncSession, tx_hash: str, now: datetime) -> None:
    await session.execute(
        update(SettlementTx).where(SettlementTx.tx_hash == tx_hash).values(broadcast_at=now)
    )


# -- nonces ----------------------------------------------------------------------------------


async def lock_nonce(session: AsyncSession, address: str) -> SignerNonce | None:
    q = select(SignerNonce).where(SignerNonce.address == address).with_for_update()
    return (await session.scalars(q)).first()


async def add_nonce(session: AsyncSession, row: SignerNonce) -> None:
    session.add(row)
    await session.flush()
