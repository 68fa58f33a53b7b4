"""The chain side shared by the settlement steps: the payment call, the stored row of a signed
transaction, finding a receipt among a settlement's transactions, and sending a stored raw
transaction (which is also where a foreign use of our nonce shows up)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from parity.chain.errors import ChainError, ChainRetryableError, NonceTooLow
from parity.chain.ports import (
    Call,
    Receipt,
    SignedTx,
    transfer_payment_call,
    transfer_payment_ref_call,
)
from parity.ledger.models import Settlement, SettlementTx
from parity.ledger.settlement import repository as repo
from parity.ledger.settlement.context import SettlementContext, log
from parity.ledger.settlement.repository import BROADCAST, FAILED, SIGNED


async def payment_call(ctx: SettlementContext, st: Settlement) -> Call:
    """``transferPaymentRef`` when the deployed StakeWallet has it (it refuses a reused ref),
    else the plain transfer."""
    if await ctx.chain.supports_payment_ref():
        return transfer_payment_ref_call(st.payer, st.payee, st.amount, bytes.fromhex(st.ref[2:]))
    return transfer_payment_call(st.payer, st.payee, st.amount)


def tx_row(settlement_id: uuid.UUID, signed: SignedTx, now: datetime) -> SettlementTx:
    return SettlementTx(
        id=uuid.uuid4(),
        settlement_id=settlement_id,
        tx_hash=signed.tx_hash,
        raw=signed.raw,
        sender=signed.sender,
        nonce=signed.nonce,
        gas=signed.gas,
        max_fee_per_gas=signed.fees.max_fee_per_gas,
        max_priority_fee_per_gas=signed.fees.max_priority_fee_per_gas,
        created_at=now,
        broadcast_at=None,
    )


async def find_receipt(ctx: SettlementContext, txs: Sequence[SettlementTx]) -> Receipt | None:
    """The receipt of any of a settlement's transactions (newest first): they share a nonce,
    so at most one of them can have one."""
    for tx in reversed(txs):
        found = await ctx.chain.receipt(tx.tx_hash)
        if found is not None:
            return found
    return None


async def send_stored(
    ctx: SettlementContext, st: Settlement, tx: SettlementTx, txs: Sequence[SettlementTx]
) -> bool:
    """Send a stored raw transaction; False when the node refused it (recorded)."""
    try:
        await ctx.chain.send_raw(tx.raw)
        return True
    except ChainRetryableError:
        raise
    except NonceTooLow:
        # The nonce is used: by one of ours (mined; the receipt step sees it) or by a
        # transaction this worker never signed — then this intent can never be mined.
        if await find_receipt(ctx, txs) is not None:
            return True
        await _nonce_taken(ctx, st, tx)
        return False
    except ChainError as exc:
        async with ctx.db.transaction() as s:
            await repo.transition(
                s,
                st.id,
                [SIGNED, BROADCAST],
                last_error=str(exc)[:2000],
                updated_at=ctx.clock.now(),
            )
        log.warning("settlement_send_refused", settlement_id=str(st.id), detail=str(exc))
        return False


async def _nonce_taken(ctx: SettlementContext, st: Settlement, tx: SettlementTx) -> None:
    """The settlement fails and waits for an operator (see
    :func:`parity.ledger.settlement.service.release_settlement`)."""
    error = (
        f"nonce {tx.nonce} of {tx.sender} was used by a transaction this server did not "
        "sign; the entries stay attached until an operator checks the chain and releases "
        "the settlement (POST /api/v1/ledger/settlements/{id}/release)"
    )
    async with ctx.db.transaction() as s:
        await repo.transition(
            s,
            st.id,
            [SIGNED, BROADCAST],
            status=FAILED,
            last_error=error,
            updated_at=ctx.clock.now(),
        )
    ctx.raise_alert("settlement_nonce_taken", st, error=error)
