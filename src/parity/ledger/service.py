"""Escrow and postings (ARCHITECTURE §6): reserve on creation, post on completion, release
otherwise; balances; stake gating. Services flush, never commit: every call runs inside the
transaction of the state change it belongs to.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.chain.stake_ids import StakeIdError, stake_id
from parity.core.billing.postings import Leg, available, payment_legs
from parity.core.billing.pricing import metered_amount, reservation_amount
from parity.core.billing.units import format_token_amount, parse_token_amount
from parity.db.pagination import Cursor
from parity.errors import InvalidInput
from parity.ledger import repository as repo
from parity.ledger.deps import LedgerDeps, StakeRead
from parity.ledger.errors import (
    BillingUnavailable,
    InsufficientFunds,
    InsufficientStake,
    Shortfall,
)
from parity.ledger.models import Entry, Posting, Reservation, Settlement

TASK = "task"
TASK_PAYMENT = "task_payment"
PROMPT = "prompt"
PROMPT_PAYMENT = "prompt_payment"


def client_account(address: str) -> str:
    """A paying client's stake id: always its address (clients have no device)."""
    return stake_id(address)


def runner_account(deps: LedgerDeps, owner: str, device_id: str | None) -> str:
    """A runner's stake id: its owner's address, or its device id under STAKE_ID_MODE=device."""
    try:
        return stake_id(owner, deps.stake_id_mode, device_id)
    except StakeIdError as exc:
        raise InvalidInput("device_id", str(exc)) from None


@dataclass(frozen=True)
class Balance:
    account: str
    stake: int
    unsettled_debits: int  # owed and not yet in ``stake``: see :func:`balance`
    reserved: int
    available: int
    pending_earnings: int
    settled_earnings: int


async def balance(
    session: AsyncSession, deps: LedgerDeps, account: str, *, stake: StakeRead | None = None
) -> Balance:
    """``stake`` when the caller has just read it from the chain, else it is read here.

    ``unsettled_debits`` are the debits not settled on chain, and also those settled at or
    after the stake figure was read (less the clock skew allowed between replicas): a cached
    figure may predate the payment, so it is never trusted to include it. Finding such a
    debit, a cached figure is read again from the node once (when the node does not answer,
    the cached one stays, with the debit counted); a figure read after the payment's
    confirmation includes it. A payment may so be counted twice for a moment (``available``
    reads low), never not at all."""
    read = stake if stake is not None else await deps.stakes.read(account)
    rows = await _not_in_stake(session, deps, account, read)
    if read.cached and any(a < 0 and settled is not None for a, settled in rows):
        try:
            read = await deps.stakes.read(account, fresh=True)
        except BillingUnavailable:
            pass
        else:
            rows = await _not_in_stake(session, deps, account, read)
    debits = -sum(a for a, _ in rows if a < 0)
    pending = sum(a for a, settled in rows if a > 0 and settled is None)
    reserved = sum(await repo.open_reservation_amounts(session, account))
    return Balance(
        account=account,
        stake=read.amount,
        unsettled_debits=debits,
        reserved=reserved,
        available=available(read.amount, debits, reserved),
        pending_earnings=pending,
        settled_earnings=sum(await repo.settled_credit_amounts(session, account)),
    )


async def _not_in_stake(
    session: AsyncSession, deps: LedgerDeps, account: str, read: StakeRead
) -> list[tuple[int, datetime | None]]:
    """The account's unsettled entries and those settled too late to show in ``read``."""
    since = read.read_at - deps.stakes.skew
    return await repo.unsettled_amounts(session, account, settled_since=since)


async def require_min_stake(deps: LedgerDeps, account: str, *, doing: str) -> StakeRead | None:
    """MIN_STAKE / MIN_STAKE_TOKENS gating: 403 ``insufficient_stake`` naming the amount
    missing. Returns the stake it read (None when there is no gate), so the caller need not
    ask the chain again."""
    if deps.min_stake <= 0 and not deps.min_stake_tokens:
        return None
    decimals = await deps.stakes.decimals()
    required = deps.min_stake
    if deps.min_stake_tokens:
        required = parse_token_amount(deps.min_stake_tokens, decimals, allow_zero=True)
    if required <= 0:
        return None
    read = await deps.stakes.read(account)
    stake = read.amount
    if stake < required:
        missing = required - stake
        symbol = await deps.stakes.symbol(deps.token_symbol)  # the token's own, as elsewhere

        def both(amount: int) -> str:
            return f"{format_token_amount(amount, decimals)} {symbol} ({amount} base units)"

        raise InsufficientStake(
            f"{doing} needs a stake of at least {both(required)}; stake {account} has "
            f"{both(stake)}: {both(missing)} missing",
            details={
                "stake_id": account,
                "required": str(required),
                "stake": str(stake),
                "missing": str(missing),
            },
        )
    return read


def _task_cost(
    deps: LedgerDeps, cpu_cores: float, memory_mb: int, gpus: int, timeout_seconds: int | None
) -> tuple[int, dict[str, Any]]:
    snapshot = deps.price.snapshot(cpu_cores, memory_mb, gpus)
    timeout = timeout_seconds or deps.default_timeout_seconds
    amount = reservation_amount(int(snapshot["base"]), int(snapshot["rate_milli"]), timeout)
    snapshot["timeout_seconds"] = timeout
    return amount, snapshot


async def _short(
    deps: LedgerDeps,
    account: str,
    amount: int,
    snapshot: dict[str, Any],
    current: Balance,
    *,
    timeout_is_default: bool,
    freed: int = 0,
) -> InsufficientFunds:
    """409 ``insufficient_funds`` in tokens and base units, saying what to change."""
    return Shortfall(
        account=account,
        required=amount,
        available=current.available + freed,
        stake=current.stake,
        reserved=current.reserved - freed,
        unsettled_debits=current.unsettled_debits,
        base=int(snapshot["base"]),
        rate_milli=int(snapshot["rate_milli"]),
        timeout_seconds=int(snapshot["timeout_seconds"]),
        timeout_is_default=timeout_is_default,
        decimals=await deps.stakes.decimals(),
        symbol=await deps.stakes.symbol(deps.token_symbol),
    ).error()


async def reserve_task(
    session: AsyncSession,
    deps: LedgerDeps,
    *,
    task_id: uuid.UUID,
    client: str,
    cpu_cores: float,
    memory_mb: int,
    gpus: int,
    timeout_seconds: int | None,
    stake: StakeRead | None = None,
) -> Reservation | None:
    """Hold a new task's maximum cost from the client's available balance; 409
    ``insufficient_funds`` naming the amount when it does not fit. None when work is free."""
    if not deps.pricing_enabled:
        return None
    account = client_account(client)
    amount, snapshot = _task_cost(deps, cpu_cores, memory_mb, gpus, timeout_seconds)
    await repo.lock_account(session, account)
    current = await balance(session, deps, account, stake=stake)
    if amount > current.available:
        raise await _short(
            deps, account, amount, snapshot, current, timeout_is_default=not timeout_seconds
        )
    return await _open_reservation(session, deps, account, TASK, str(task_id), amount, snapshot)


async def resize_task_reservation(
    session: AsyncSession,
    deps: LedgerDeps,
    *,
    task_id: uuid.UUID,
    cpu_cores: float,
    memory_mb: int,
    gpus: int,
    timeout_seconds: int | None,
) -> Reservation | None:
    """A pending task was edited: its escrow follows its new resources and timeout, at the
    current price (409 ``insufficient_funds`` when the larger amount does not fit; the edit is
    then rolled back with it). A task created while pricing was off stays unpriced."""
    reservation = await repo.reservation_for(session, TASK, str(task_id), lock=True)
    if reservation is None or reservation.status != "open" or not deps.pricing_enabled:
        return reservation
    amount, snapshot = _task_cost(deps, cpu_cores, memory_mb, gpus, timeout_seconds)
    await repo.lock_account(session, reservation.account)
    current = await balance(session, deps, reservation.account)
    if amount > current.available + reservation.amount:
        raise await _short(
            deps,
            reservation.account,
            amount,
            snapshot,
            current,
            timeout_is_default=not timeout_seconds,
            freed=reservation.amount,
        )
    reservation.amount = amount
    reservation.price = snapshot
    await session.flush()
    return reservation


async def check_escrow_possible(session: AsyncSession, deps: LedgerDeps) -> bool:
    """At start-up: can any task hold escrow (pricing on, or reservations still open)?"""
    possible = deps.pricing_enabled or await repo.any_open_reservation(session)
    deps.escrow.possible = possible
    return possible


async def open_task_reservation(session: AsyncSession, task_id: uuid.UUID) -> Reservation | None:
    """The task's escrow, locked, when it is still open (None for unpriced or closed work)."""
    reservation = await repo.reservation_for(session, TASK, str(task_id), lock=True)
    return reservation if reservation is not None and reservation.status == "open" else None


async def close_task(
    session: AsyncSession,
    deps: LedgerDeps,
    reservation: Reservation,
    *,
    completed: bool,
    started_at: datetime | None,
    completed_at: datetime | None,
    payee: str | None,
    report_delay_ms: int = 0,
) -> Posting | None:
    """A task ended; ``reservation`` is its open escrow (:func:`open_task_reservation`).
    Completed: bill the server-observed run time (start to the accepted completion, less
    ``report_delay_ms``, the time the completion waited on its runner to get through) at the
    reserved price (capped by the reservation) as one posting, and consume the reservation.
    Otherwise release it. A posting already there is never written twice (unique per task)."""
    task_id = reservation.source_id
    now = deps.clock.now()
    reservation.closed_at = now
    if not completed or payee is None or started_at is None or completed_at is None:
        reservation.status = "released"
        await session.flush()
        return None
    reservation.status = "consumed"
    if await repo.posting_for(session, TASK, task_id, TASK_PAYMENT) is not None:
        await session.flush()
        return None
    observed = max(int((completed_at - started_at).total_seconds() * 1000), 0)
    ms = observed - min(max(report_delay_ms, 0), observed)
    amount = metered_amount(reservation.price, ms, reservation.amount)
    return await pay(
        session,
        deps,
        payer=reservation.account,
        payee=payee,
        amount=amount,
        source=(TASK, task_id, TASK_PAYMENT),
        facts={
            "milliseconds": ms,
            **({"report_delay_ms": observed - ms} if ms < observed else {}),
            "price": reservation.price,
            "reserved": str(reservation.amount),
        },
    )


async def reserve_amount(
    session: AsyncSession,
    deps: LedgerDeps,
    *,
    source_type: str,
    source_id: str,
    client: str,
    amount: int,
    price_snapshot: dict[str, Any],
    stake: StakeRead | None = None,
    what: str,
) -> Reservation | None:
    """Hold ``amount`` (work priced by its own domain, e.g. a prompt's tokens) from the
    client's available balance; 409 ``insufficient_funds`` naming the amounts when it does not
    fit. ``what`` says in words what the amount pays for. None when pricing is off or the
    amount is zero."""
    if not deps.pricing_enabled or amount <= 0:
        return None
    account = client_account(client)
    await repo.lock_account(session, account)
    current = await balance(session, deps, account, stake=stake)
    if amount > current.available:
        decimals = await deps.stakes.decimals()
        symbol = await deps.stakes.symbol(deps.token_symbol)

        def tokens(units: int) -> str:
            return f"{format_token_amount(units, decimals)} {symbol} ({units} base units)"

        missing = amount - current.available
        raise InsufficientFunds(
            f"{what} reserves up to {tokens(amount)} in escrow; {account} has "
            f"{tokens(max(current.available, 0))} available (stake {tokens(current.stake)}, "
            f"held for other work {tokens(current.reserved)}, owed "
            f"{tokens(current.unsettled_debits)}): {tokens(missing)} missing. Stake more "
            "(parity-server stake) or ask for less.",
            details={
                "required": str(amount),
                "available": str(current.available),
                "missing": str(missing),
            },
        )
    return await _open_reservation(
        session, deps, account, source_type, source_id, amount, price_snapshot
    )


async def _open_reservation(
    session: AsyncSession,
    deps: LedgerDeps,
    account: str,
    source_type: str,
    source_id: str,
    amount: int,
    price: dict[str, Any],
) -> Reservation:
    """An open escrow of ``amount`` for one piece of work (the caller checked the balance
    under the account's lock)."""
    reservation = Reservation(
        id=uuid.uuid4(),
        account=account,
        source_type=source_type,
        source_id=source_id,
        amount=amount,
        price=price,
        status="open",
        created_at=deps.clock.now(),
        closed_at=None,
    )
    await repo.add(session, reservation)
    return reservation


async def close_with_amount(
    session: AsyncSession,
    deps: LedgerDeps,
    *,
    source_type: str,
    source_id: str,
    kind: str,
    amount: int | None,
    payee: str | None,
    facts: dict[str, Any],
) -> Posting | None:
    """Close the open escrow of a piece of work metered by its own domain: with an ``amount``
    and a ``payee``, post one payment of ``min(amount, reserved)`` (client -P, payee +(P-fee),
    protocol +fee) and consume the reservation; otherwise release it. No open reservation
    (unpriced work, or already closed) does nothing; a posting already there is never written
    twice (unique per source and kind)."""
    reservation = await repo.reservation_for(session, source_type, source_id, lock=True)
    if reservation is None or reservation.status != "open":
        return None
    now = deps.clock.now()
    reservation.closed_at = now
    if amount is None or payee is None:
        reservation.status = "released"
        await session.flush()
        return None
    reservation.status = "consumed"
    if await repo.posting_for(session, source_type, source_id, kind) is not None:
        await session.flush()
        return None
    billed = min(max(amount, 0), reservation.amount)
    return await pay(
        session,
        deps,
        payer=reservation.account,
        payee=payee,
        amount=billed,
        source=(source_type, source_id, kind),
        facts={**facts, "reserved": str(reservation.amount)},
    )


async def pay(
    session: AsyncSession,
    deps: LedgerDeps,
    *,
    payer: str,
    payee: str,
    amount: int,
    source: tuple[str, str, str],
    facts: dict[str, Any],
) -> Posting:
    """Post one payment of ``amount`` from ``payer`` to ``payee`` (payer -P, payee +(P-fee),
    protocol +fee) for ``source`` = (source type, source id, kind); ``facts`` say what it
    paid for (the amount and the fee rate are added)."""
    source_type, source_id, kind = source
    legs = payment_legs(payer, payee, amount, fee_bps=deps.fee_bps, protocol=deps.protocol_account)
    posting = Posting(
        id=uuid.uuid4(),
        source_type=source_type,
        source_id=source_id,
        kind=kind,
        facts={**facts, "amount": str(amount), "fee_bps": deps.fee_bps},
        created_at=deps.clock.now(),
    )
    await post(session, posting, legs)
    return posting


async def post(session: AsyncSession, posting: Posting, legs: list[Leg]) -> None:
    """Store a posting and its legs (none for a posting of zero)."""
    entries = [
        Entry(
            id=uuid.uuid4(),
            posting_id=posting.id,
            account=leg.account,
            role=leg.role,
            amount=leg.amount,
            counterparty=leg.counterparty,
            settlement_id=None,
            settled_at=None,
            created_at=posting.created_at,
        )
        for leg in legs
    ]
    await repo.add(session, posting)
    if entries:
        await repo.add(session, *entries)


@dataclass(frozen=True)
class TaskReward:
    status: str  # not_priced | reserved | released | unsettled | settling | paid
    price: int | None
    reward: int | None
    fee: int | None
    reserved: int | None
    settlements: list[dict[str, Any]]
    message: str


async def task_reward(
    session: AsyncSession,
    deps: LedgerDeps,
    task_id: uuid.UUID,
    *,
    settling: bool = True,
    task_type: str = "command",
) -> TaskReward:
    """What a task costs its client and pays its runner, and whether it is paid on chain.
    ``settling`` is whether this server runs the settlement worker: without it an unpaid
    posting does not move, and the message says so. An ``llm`` task is its prompt's: reserved
    and billed under the prompt (its tokens); an ``fl_train`` task holds nothing of its own
    (its session's reward pool pays the update)."""
    if task_type == "fl_train":
        return TaskReward("not_priced", None, None, None, None, [], _FL_TRAIN)
    source, kind = (PROMPT, PROMPT_PAYMENT) if task_type == "llm" else (TASK, TASK_PAYMENT)
    reservation = await repo.reservation_for(session, source, str(task_id))
    if reservation is None:
        return TaskReward("not_priced", None, None, None, None, [], _NOT_PRICED)
    if reservation.status != "consumed":
        status = "reserved" if reservation.status == "open" else "released"
        message = (
            "the task has not completed; its maximum cost is held in escrow"
            if status == "reserved"
            else "the task ended without a completion; nothing is owed"
        )
        return TaskReward(status, None, None, None, reservation.amount, [], message)
    posting = await repo.posting_for(session, source, str(task_id), kind)
    entries = await repo.entries_of_posting(session, posting.id) if posting else []
    price = -sum(e.amount for e in entries if e.role == "payer")
    reward = sum(e.amount for e in entries if e.role == "payee")
    fee = sum(e.amount for e in entries if e.role == "protocol")
    credits = [e for e in entries if e.amount > 0]
    linked = await repo.settlements_by_id(
        session, [e.settlement_id for e in credits if e.settlement_id is not None]
    )
    settlements = [
        {"id": str(s.id), "payee": s.payee, "status": s.status, "tx_hash": s.tx_hash}
        for s in linked.values()
    ]
    if not credits or all(e.settled_at is not None for e in credits):
        status, message = "paid", "settled on chain"
    elif any(s.status == "failed" for s in linked.values()):
        # Held, not under way: nothing moves until an operator releases it (it is then
        # detached, and this task reads "unsettled" until the worker pays it again).
        status, message = "settling", _HELD
    elif linked:
        status = "settling"
        message = "a settlement transaction is under way" if settling else _STALLED
    else:
        status = "unsettled"
        message = "posted; waiting for the settlement worker" if settling else _NOT_SETTLING
    return TaskReward(status, price, reward, fee, reservation.amount, settlements, message)


_NOT_PRICED = "this task was created while pricing was off; it costs nothing"
_FL_TRAIN = (
    "an FL training task is not priced itself: its session's reward pool pays each accepted "
    "update (see the session's rewards)"
)
_HELD = "a settlement failed (another transaction used its nonce) and waits for an operator"
_NO_WORKER = (
    "this server does not settle (its settlement worker is off: no FILECOIN_RPC or no "
    "settlement signer)"
)
_NOT_SETTLING = (
    f"posted but not paid: {_NO_WORKER}; nothing is paid on chain until a server with the "
    "chain settings runs on this ledger"
)
_STALLED = (
    f"a settlement was started but does not go on: {_NO_WORKER}; it goes on once a server with "
    "the chain settings runs on this ledger"
)


async def list_entries(
    session: AsyncSession, account: str, limit: int, after: Cursor | None
) -> list[tuple[Entry, Posting]]:
    return await repo.list_entries(session, account, limit, after)


async def list_reservations(
    session: AsyncSession, account: str, status: str | None, limit: int, after: Cursor | None
) -> list[Reservation]:
    return await repo.list_reservations(session, account, status, limit, after)


async def list_payouts(
    session: AsyncSession, account: str, limit: int, after: Cursor | None
) -> list[Settlement]:
    return await repo.list_payouts(session, account, limit, after)


async def describe(session: AsyncSession, deps: LedgerDeps, *, settling: bool) -> dict[str, Any]:
    """For /api/status: the prices in force, the fee, the stake gate and settlement counts."""
    p = deps.price
    return {
        "pricing": deps.pricing_enabled,
        "prices": {
            "task_base": str(p.base),
            "cpu_core_second": str(p.cpu_core_second),
            "memory_mb_second": str(p.memory_mb_second),
            "gpu_second": str(p.gpu_second),
        },
        "protocol_fee_bps": deps.fee_bps,
        "min_stake": str(deps.min_stake),
        "min_stake_tokens": deps.min_stake_tokens or None,
        "settlement": {
            "worker": "on" if settling else "off",
            "by_status": await repo.settlement_counts(session),
        },
    }
