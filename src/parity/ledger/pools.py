"""Reward pools (ARCHITECTURE §6, FL: "the pool"): one escrow held from a client once, paying
many small rewards and releasing what is left at the end.

The pool is an ordinary :class:`Reservation`. Each payment lowers its ``amount``, so an open pool
always holds exactly what it can still pay and :func:`parity.ledger.service.balance` (which sums
open reservations' ``amount``) stays right without a column of its own. What was reserved and
what was paid live in the reservation's ``price`` JSON (``{"pool": "<reserved>", "paid":
"<sum>"}``, base units as strings), which the reservations listing already shows.

A payment is one posting (client -P, payee +(P-fee), protocol +fee) keyed by the pool's
``source_type``, the payment's own ``payment_source_id`` and ``kind``, so the ledger's entries
read as "<domain> <kind> for <payment>" and a retried payment can never post twice. Services
flush, never commit: every call runs in the transaction of the state change it belongs to.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from parity.ledger import repository as repo
from parity.ledger import service as ledger
from parity.ledger.deps import LedgerDeps
from parity.ledger.models import Posting, Reservation

# The widths of the ledger's key columns (ledger/models.py): a longer key is a caller's bug,
# refused here rather than truncated or refused differently by each database.
_MAX_SOURCE_TYPE = 16
_MAX_SOURCE_ID = 64
_MAX_KIND = 24


def _check_key(source_type: str, source_id: str, kind: str | None = None) -> None:
    if not 0 < len(source_type) <= _MAX_SOURCE_TYPE:
        raise ValueError(f"source_type must be 1..{_MAX_SOURCE_TYPE} characters: {source_type!r}")
    if not 0 < len(source_id) <= _MAX_SOURCE_ID:
        raise ValueError(f"source_id must be 1..{_MAX_SOURCE_ID} characters: {source_id!r}")
    if kind is not None and not 0 < len(kind) <= _MAX_KIND:
        raise ValueError(f"kind must be 1..{_MAX_KIND} characters: {kind!r}")


def _reserved(reservation: Reservation) -> int:
    """What the pool held at first (a reservation made elsewhere: its amount)."""
    return int(reservation.price.get("pool", reservation.amount))


def _paid(reservation: Reservation) -> int:
    return int(reservation.price.get("paid", 0))


async def _locked_pool(
    session: AsyncSession, source_type: str, source_id: str
) -> Reservation | None:
    """The pool's row, locked for the rest of the transaction, read afresh (a copy already in
    the session would otherwise hide a payment committed while this one waited for the lock)."""
    q = (
        select(Reservation)
        .where(Reservation.source_type == source_type, Reservation.source_id == source_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(q)).one_or_none()


async def reserve_pool(
    session: AsyncSession,
    deps: LedgerDeps,
    *,
    source_type: str,
    source_id: str,
    client: str,
    amount: int,
    what: str,
) -> Reservation | None:
    """Hold a reward pool of ``amount`` base units from ``client``'s available balance.

    MIN_STAKE gates creating the work whether or not it is priced (403 ``insufficient_stake``,
    as for tasks); then 409 ``insufficient_funds`` naming the amounts when the pool does not
    fit (``what`` says in words what the pool is for). None when pricing is off or ``amount``
    is zero. A source that already has a pool gets that pool back, never a second hold."""
    _check_key(source_type, source_id)
    account = ledger.client_account(client)
    stake = await ledger.require_min_stake(deps, account, doing="creating work")
    if not deps.pricing_enabled or amount <= 0:
        return None
    existing = await repo.reservation_for(session, source_type, source_id)
    if existing is not None:
        return existing
    return await ledger.reserve_amount(
        session,
        deps,
        source_type=source_type,
        source_id=source_id,
        client=client,
        amount=amount,
        price_snapshot={"pool": str(amount), "paid": "0"},
        stake=stake,
        what=what,
    )


async def pay_from_pool(
    session: AsyncSession,
    deps: LedgerDeps,
    *,
    source_type: str,
    source_id: str,
    payment_source_id: str,
    kind: str,
    amount: int,
    payee: str,
    facts: dict[str, Any],
) -> Posting | None:
    """Pay ``min(amount, remaining)`` from the pool's client to ``payee`` (the protocol's fee
    split as every payment) as one posting keyed (``source_type``, ``payment_source_id``,
    ``kind``), and lower what the pool holds by it; a pool paid down to zero is ``consumed``.

    Writes nothing and returns None when that posting already exists (a retried payment), when
    the pool is absent (unpriced work) or closed, or when there is nothing to pay. The pool's
    row is locked first, so concurrent payments from one pool never pay more than it holds."""
    _check_key(source_type, payment_source_id, kind)
    pool = await _locked_pool(session, source_type, source_id)
    if pool is None or pool.status != "open":
        return None
    if await repo.posting_for(session, source_type, payment_source_id, kind) is not None:
        return None
    paid = min(max(amount, 0), pool.amount)
    if paid <= 0:
        return None
    now = deps.clock.now()
    remaining = pool.amount - paid
    posting = await ledger.pay(
        session,
        deps,
        payer=pool.account,
        payee=payee,
        amount=paid,
        source=(source_type, payment_source_id, kind),
        facts={
            **facts,
            "pool": {"source_type": source_type, "source_id": source_id},
            "requested": str(amount),
            "remaining": str(remaining),
        },
    )
    pool.amount = remaining
    # A new dict: the JSON column does not track changes made inside the old one.
    pool.price = {**pool.price, "paid": str(_paid(pool) + paid)}
    if remaining == 0:
        pool.status = "consumed"
        pool.closed_at = now
    await session.flush()
    return posting


async def release_pool(
    session: AsyncSession, deps: LedgerDeps, *, source_type: str, source_id: str
) -> int:
    """Return what the pool still holds to its client's available balance (status
    ``released``) and say how much that was. 0 for an absent, consumed or already released
    pool, so a repeated release changes nothing."""
    _check_key(source_type, source_id)
    pool = await _locked_pool(session, source_type, source_id)
    if pool is None or pool.status != "open":
        return 0
    released = pool.amount
    pool.status = "released"
    pool.closed_at = deps.clock.now()
    pool.price = {**pool.price, "released": str(released)}
    await session.flush()
    return released


async def pool_state(
    session: AsyncSession, *, source_type: str, source_id: str
) -> dict[str, Any] | None:
    """The pool of a source (None when it has none: unpriced work), amounts as ``int`` base
    units: ``reserved`` at first, ``paid`` out so far, ``remaining`` (what it still holds;
    0 once closed), ``released`` (what went back to the client), ``status`` (open | consumed |
    released), the paying ``account``."""
    pool = await repo.reservation_for(session, source_type, source_id)
    if pool is None:
        return None
    is_open = pool.status == "open"
    return {
        "account": pool.account,
        "status": pool.status,
        "reserved": _reserved(pool),
        "paid": _paid(pool),
        "remaining": pool.amount if is_open else 0,
        "released": int(pool.price.get("released", 0)),
        "created_at": pool.created_at,
        "closed_at": pool.closed_at,
    }
