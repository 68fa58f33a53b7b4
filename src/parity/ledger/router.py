"""Balances, escrow and earnings: ``/api/v1/ledger/*``. Amounts are decimal base-unit strings
with a ``display`` in token units where a person reads them."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from parity.api.deps import (
    ContainerDep,
    CurrentPrincipal,
    ReadSession,
    WalletPrincipal,
    WriteSession,
)
from parity.api.jsonbody import JsonRoute
from parity.api.pagination import Page, PageParamsDep, make_page
from parity.auth.schemas import Principal
from parity.chain.stake_ids import StakeIdError, StakeIdMode, stake_id
from parity.core.billing.units import format_token_amount
from parity.errors import Forbidden, InvalidInput
from parity.ledger import service
from parity.ledger.models import Settlement
from parity.ledger.schemas import (
    BalanceRead,
    EntryRead,
    PayoutRead,
    ReservationRead,
    SettlementRead,
    SettlementStatus,
)
from parity.ledger.settlement import service as settlement_service

router = APIRouter(route_class=JsonRoute, tags=["ledger"])

AccountQuery = Annotated[
    str | None,
    Query(description="Another stake id (operators only); default: your own address"),
]


def _account(principal: Principal, account: str | None, mode: StakeIdMode) -> str:
    """The account to read: the caller's own, or (operators) ``account``, a 0x address or,
    under STAKE_ID_MODE=device, a runner's device id. A malformed address is refused, not read
    as an account that holds nothing."""
    own = service.client_account(principal.address)
    if account is None or account.lower() == own:
        return own
    if not principal.is_admin:
        raise Forbidden("only operators may read another account's ledger")
    if not account.strip():
        raise InvalidInput("account", "must not be empty")
    if mode == "device" and not account.startswith(("0x", "0X")):
        return account  # a runner's device id
    try:
        return stake_id(account)
    except StakeIdError:
        also = " or a runner's device id" if mode == "device" else ""
        raise InvalidInput(
            "account",
            "must be a 0x address (40 hex digits; mixed case must be its EIP-55 checksum)" + also,
        ) from None


@router.get("/ledger/balance", response_model=BalanceRead)
async def ledger_balance(
    principal: CurrentPrincipal,
    session: ReadSession,
    c: ContainerDep,
    account: AccountQuery = None,
) -> BalanceRead:
    """Stake (from the chain), unsettled debits, escrow, available balance and earnings."""
    deps = c.ledger
    b = await service.balance(session, deps, _account(principal, account, c.ledger.stake_id_mode))
    decimals = await deps.stakes.decimals()
    amounts = {
        "stake": b.stake,
        "unsettled_debits": b.unsettled_debits,
        "reserved": b.reserved,
        "available": b.available,
        "pending_earnings": b.pending_earnings,
        "settled_earnings": b.settled_earnings,
    }
    return BalanceRead(
        account=b.account,
        decimals=decimals,
        symbol=await deps.stakes.symbol(deps.token_symbol),
        display={k: format_token_amount(v, decimals) for k, v in amounts.items()},
        **{k: str(v) for k, v in amounts.items()},
    )


@router.get("/ledger/entries", response_model=Page[EntryRead])
async def ledger_entries(
    principal: CurrentPrincipal,
    session: ReadSession,
    page: PageParamsDep,
    c: ContainerDep,
    account: AccountQuery = None,
) -> Page[EntryRead]:
    """Your ledger entries (debits negative), newest first."""
    rows = await service.list_entries(
        session, _account(principal, account, c.ledger.stake_id_mode), page.limit, page.cursor
    )
    items = [
        EntryRead(
            id=e.id,
            posting_id=p.id,
            source_type=p.source_type,
            source_id=p.source_id,
            kind=p.kind,
            account=e.account,
            role=e.role,
            amount=str(e.amount),
            counterparty=e.counterparty,
            settlement_id=e.settlement_id,
            settled_at=e.settled_at,
            created_at=e.created_at,
        )
        for e, p in rows
    ]
    return make_page(items, [e for e, _ in rows], page.limit)


@router.get("/ledger/reservations", response_model=Page[ReservationRead])
async def ledger_reservations(
    principal: CurrentPrincipal,
    session: ReadSession,
    page: PageParamsDep,
    c: ContainerDep,
    account: AccountQuery = None,
    status: Annotated[Literal["open", "consumed", "released"] | None, Query()] = None,
) -> Page[ReservationRead]:
    """Escrow held for your work, newest first."""
    rows = await service.list_reservations(
        session,
        _account(principal, account, c.ledger.stake_id_mode),
        status,
        page.limit,
        page.cursor,
    )
    items = [
        ReservationRead(
            id=r.id,
            account=r.account,
            source_type=r.source_type,
            source_id=r.source_id,
            amount=str(r.amount),
            price=r.price,
            status=r.status,
            created_at=r.created_at,
            closed_at=r.closed_at,
        )
        for r in rows
    ]
    return make_page(items, rows, page.limit)


@router.get("/ledger/payouts", response_model=Page[PayoutRead])
async def ledger_payouts(
    principal: CurrentPrincipal,
    session: ReadSession,
    page: PageParamsDep,
    c: ContainerDep,
    account: AccountQuery = None,
) -> Page[PayoutRead]:
    """On-chain payments to you (runner earnings, protocol fees), newest first."""
    rows = await service.list_payouts(
        session, _account(principal, account, c.ledger.stake_id_mode), page.limit, page.cursor
    )
    items = [PayoutRead(**_payout_fields(s)) for s in rows]
    return make_page(items, rows, page.limit)


def _payout_fields(s: Settlement) -> dict[str, Any]:
    """What a payout shows of a settlement (SettlementRead adds the operator's details)."""
    return {
        "id": s.id,
        "payer": s.payer,
        "payee": s.payee,
        "amount": str(s.amount),
        "status": s.status,
        "tx_hash": s.tx_hash,
        "block_number": s.block_number,
        "last_error": s.last_error,
        "created_at": s.created_at,
        "confirmed_at": s.confirmed_at,
    }


def _settlement_read(s: Settlement) -> SettlementRead:
    return SettlementRead(
        **_payout_fields(s),
        ref=s.ref,
        nonce=s.nonce,
        block_hash=s.block_hash,
        tries=s.tries,
        updated_at=s.updated_at,
        released_by=s.released_by,
        released_at=s.released_at,
    )


@router.get("/ledger/settlements", response_model=Page[SettlementRead])
async def ledger_settlements(
    principal: CurrentPrincipal,
    session: ReadSession,
    page: PageParamsDep,
    status: Annotated[SettlementStatus | None, Query()] = None,
) -> Page[SettlementRead]:
    """Operators only: every on-chain payment (e.g. ``?status=failed``), newest first."""
    rows = await settlement_service.list_settlements(
        session, principal, status, page.limit, page.cursor
    )
    return make_page([_settlement_read(s) for s in rows], rows, page.limit)


@router.post("/ledger/settlements/{settlement_id}/release", response_model=SettlementRead)
async def release_settlement(
    settlement_id: uuid.UUID, principal: WalletPrincipal, session: WriteSession, c: ContainerDep
) -> SettlementRead:
    """Operators only: return a ``failed`` settlement's entries to unsettled, so the worker
    pays them again under a new nonce; the settlement ends ``released``. Repeating it is
    harmless."""
    st = await settlement_service.release_settlement(
        session, c.ledger, c.chain, principal, settlement_id
    )
    return _settlement_read(st)
