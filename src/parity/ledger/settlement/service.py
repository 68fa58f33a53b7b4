"""Operator use cases on settlements: find them, and release a ``failed`` one.

A settlement fails when the signer's nonce was taken by a transaction this server did not sign
(see :func:`parity.ledger.settlement.sending.send_stored`): none of its transactions can be
mined any more, so its entries would stay attached, unpaid, forever. Releasing it returns them
to unsettled in the same transaction that marks it ``released``; the worker then pays them
under a new intent, with a new ref and a new nonce. Services flush, never commit."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from parity.auth import service as auth_service
from parity.auth.schemas import Principal
from parity.chain.ports import ChainClient
from parity.db.pagination import Cursor
from parity.ledger.deps import LedgerDeps
from parity.ledger.errors import (
    ChainNotConfigured,
    SettlementNotFailed,
    SettlementNotFound,
    SettlementPaidOnChain,
)
from parity.ledger.models import Settlement
from parity.ledger.settlement import repository as repo
from parity.ledger.settlement.repository import FAILED, RELEASED
from parity.logging import get_logger

log = get_logger("parity.settlement")


async def list_settlements(
    session: AsyncSession,
    principal: Principal,
    status: str | None,
    limit: int,
    after: Cursor | None,
) -> list[Settlement]:
    auth_service.require_admin(principal)
    return await repo.newest(session, status, limit, after)


async def release_settlement(
    session: AsyncSession,
    deps: LedgerDeps,
    chain: ChainClient | None,
    principal: Principal,
    settlement_id: uuid.UUID,
) -> Settlement:
    """Return a ``failed`` settlement's entries to unsettled and mark it ``released``. Releasing
    a released one again changes nothing and answers the same."""
    auth_service.require_admin(principal)
    st = await repo.get(session, settlement_id, lock=True)
    if st is None:
        raise SettlementNotFound(f"settlement {settlement_id} not found")
    if st.status == RELEASED:
        return st
    if st.status != FAILED:
        raise SettlementNotFailed(
            f"settlement {settlement_id} is {st.status}: only a failed settlement can be released",
            details={"status": st.status},
        )
    await _refuse_if_paid(session, chain, st)
    now = deps.clock.now()
    await repo.transition(
        session,
        st.id,
        FAILED,
        status=RELEASED,
        released_by=principal.address,
        released_at=now,
        updated_at=now,
    )
    entries = await repo.release_entries(session, st.id)
    log.warning(
        "settlement_released",
        settlement_id=str(st.id),
        released_by=principal.address,
        payer=st.payer,
        payee=st.payee,
        amount=str(st.amount),
        entries=entries,
    )
    return st


async def _refuse_if_paid(session: AsyncSession, chain: ChainClient | None, st: Settlement) -> None:
    """The worker failed the settlement when no receipt of its own was found; a node that was
    behind then, or a reorg since, could have let one of them in after all. Paying the entries
    again on that evidence would pay them twice, so the chain is asked once more."""
    if chain is None:
        raise ChainNotConfigured(
            "this server has no chain configured (FILECOIN_RPC), so it cannot check that no "
            "transaction of the settlement was mined"
        )
    for tx in reversed(await repo.transactions(session, st.id)):
        found = await chain.receipt(tx.tx_hash)
        if found is not None and found.ok:
            raise SettlementPaidOnChain(
                f"transaction {found.tx_hash} of settlement {st.id} was mined in block "
                f"{found.block_number}: the payment went through, releasing would pay it twice",
                details={"tx_hash": found.tx_hash, "block_number": found.block_number},
            )
