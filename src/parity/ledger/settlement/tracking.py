"""Steps 4 and 5 of a settlement pass: receipts (re-sending a dropped transaction, same-nonce
fee bumps for a held one), then confirmation at depth, with the receipt re-checked for a reorg
and a reverted receipt returning the entries to unsettled (see :mod:`parity.ledger.settlement`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.chain.errors import ChainError, ChainRetryableError, NonceTooLow
from parity.chain.ports import Fees, Receipt
from parity.events import service as events_service
from parity.ledger.models import Settlement, SettlementTx
from parity.ledger.settlement import repository as repo
from parity.ledger.settlement.context import SettlementContext, load, log, transactions
from parity.ledger.settlement.policy import PassReport, bumped_fees
from parity.ledger.settlement.repository import BROADCAST, CONFIRMED, MINED, REVERTED, SIGNED
from parity.ledger.settlement.sending import find_receipt, payment_call, send_stored, tx_row

# -- 4. receipt --------------------------------------------------------------------------------


async def check_receipts(ctx: SettlementContext, report: PassReport, *, rebroadcast: bool) -> None:
    for st in await load(ctx, [BROADCAST]):
        txs = await transactions(ctx, st.id)
        if not txs:
            continue
        found = await find_receipt(ctx, txs)
        if found is not None:
            ctx.at("after_receipt", st.id)
            async with ctx.db.transaction() as s:
                await repo.transition(
                    s,
                    st.id,
                    BROADCAST,
                    status=MINED,
                    tx_hash=found.tx_hash,
                    block_number=found.block_number,
                    block_hash=found.block_hash,
                    updated_at=ctx.clock.now(),
                )
            report.mined += 1
            continue
        latest = txs[-1]
        dropped = await ctx.chain.get_transaction(latest.tx_hash) is None
        if dropped or rebroadcast:  # the node lost it, or may have (we restarted)
            sent = await send_stored(ctx, st, latest, txs)
            report.rebroadcast += sent
            if dropped or not sent:
                continue
        if await _nonce_gap(ctx, st, latest, report):
            continue  # a fee bump cannot help: the nonces below it are missing
        waited = ctx.clock.now() - (latest.broadcast_at or latest.created_at)
        if waited >= timedelta(seconds=ctx.config.fee_bump_seconds) and await _bump(
            ctx, st, latest
        ):
            report.bumped += 1


async def _nonce_gap(
    ctx: SettlementContext, st: Settlement, latest: SettlementTx, report: PassReport
) -> bool:
    """True when the node holds the transaction behind nonces nothing fills: the chain's next
    nonce for the signer is below it and no pending transaction of the signer covers the gap.
    When the chain has lost a payment it had mined (it was reset, e.g. a restarted dev-chain),
    the lost nonces are filled (:func:`_fill_lost_nonces`) and the transaction can be mined;
    otherwise the gap is recorded in ``last_error`` and alerted once."""
    chain_next = await ctx.chain.transaction_count(latest.sender, pending=True)
    if latest.nonce <= chain_next:
        return False
    filled = await _fill_lost_nonces(ctx, latest.sender, chain_next, latest.nonce)
    if filled:
        report.filled += filled
        return True
    error = (
        f"transaction {latest.tx_hash} (nonce {latest.nonce} of {latest.sender}) cannot be "
        f"mined: the chain's next nonce for that address is {chain_next} and nothing fills "
        f"nonces {chain_next} to {latest.nonce - 1}, which this server used before; the "
        "chain has lost those transactions"
    )
    if st.last_error == error:
        return True
    async with ctx.db.transaction() as s:
        await repo.transition(
            s, st.id, BROADCAST, last_error=error[:2000], updated_at=ctx.clock.now()
        )
    ctx.raise_alert("settlement_nonce_gap", st, error=error, tx_hash=latest.tx_hash)
    return True


async def _fill_lost_nonces(ctx: SettlementContext, sender: str, low: int, high: int) -> int:
    """Use up, with transactions that move nothing, the nonces from ``low`` on whose payments
    the chain has lost although it had mined them (confirmed or reverted settlements whose
    transactions the node does not know: the chain was reset under the database), skipping
    those an unfinished settlement of ours holds (it is sent again itself). A settlement is
    never sent again at another nonce, and a nonce no payment of ours used is not touched (it
    stops the filling: whoever used it before may use it again, as dev-chain's deployment
    does). Returns how many were sent (alerted as ``settlement_chain_reset``)."""
    if sender != ctx.address:
        return 0  # signed by another key: only that key can fill its nonces
    async with ctx.db.read_session() as s:
        holders = await repo.nonce_holders(s, sender, low, high)
    live = {n for n, status, _ in holders if status in (SIGNED, BROADCAST, MINED)}
    final = {
        n: tx_hash
        for n, status, tx_hash in holders
        if status in (CONFIRMED, REVERTED) and tx_hash is not None
    }
    fillable: list[int] = []
    for nonce in range(low, high):
        if nonce in live:
            continue
        if nonce not in final:
            break
        fillable.append(nonce)
    if not fillable:
        return 0
    lost = (fillable[0], final[fillable[0]])
    if await ctx.chain.get_transaction(lost[1]) is not None:
        return 0  # the chain has it: not a reset (e.g. a node behind the others)
    fees = await ctx.chain.suggest_fees()
    filled: list[int] = []
    for nonce in fillable:
        signed = await ctx.chain.sign_nonce_filler(ctx.signer, nonce=nonce, fees=fees)
        try:
            await ctx.chain.send_raw(signed.raw)
        except ChainRetryableError:
            raise
        except NonceTooLow:
            continue  # used after all: nothing to fill
        except ChainError as exc:
            log.warning("settlement_nonce_fill_refused", nonce=nonce, detail=str(exc))
            break
        filled.append(nonce)
    if not filled:
        return 0
    ctx.send_alert(
        "settlement_chain_reset",
        {
            "signer": sender,
            "lost_tx_hash": lost[1],
            "lost_nonce": lost[0],
            "filled_nonces": ",".join(map(str, filled[:100])) + ("…" if len(filled) > 100 else ""),
            "error": (
                f"the chain no longer has transaction {lost[1]} (nonce {lost[0]} of {sender}), "
                "which paid a settlement it had mined: the chain was reset (e.g. a restarted "
                f"dev-chain). {len(filled)} nonce(s) of payments it lost were used up by "
                "transactions that move nothing, so the payments waiting behind them can be "
                "mined; payments confirmed before the reset are not paid again"
            ),
        },
    )
    return len(filled)


async def _bump(ctx: SettlementContext, st: Settlement, latest: SettlementTx) -> bool:
    """Replace the pending transaction: same nonce, same gas, higher fees; stored first."""
    call = await payment_call(ctx, st)
    old = Fees(latest.max_fee_per_gas, latest.max_priority_fee_per_gas)
    fees = bumped_fees(old, await ctx.chain.suggest_fees(), ctx.config.fee_bump_percent)
    ceiling = ctx.config.max_fee_per_gas
    if ceiling and fees.max_fee_per_gas > ceiling:
        # Keep waiting at the current price rather than outbid the configured ceiling.
        log.warning(
            "settlement_fee_ceiling",
            settlement_id=str(st.id),
            wanted_max_fee_per_gas=fees.max_fee_per_gas,
            ceiling=ceiling,
        )
        return False
    now = ctx.clock.now()
    async with ctx.db.transaction() as s:
        current = await repo.get(s, st.id, lock=True)
        if current is None or current.status != BROADCAST:
            return False
        signed = await ctx.chain.build_and_sign(
            ctx.signer, call, nonce=latest.nonce, fees=fees, gas=latest.gas
        )
        ctx.at("after_sign_before_record", st.id)
        row = tx_row(st.id, signed, now)
        await repo.add_transaction(s, row)
        await repo.transition(s, st.id, BROADCAST, tx_hash=signed.tx_hash, updated_at=now)
    log.warning(
        "settlement_fee_bump",
        settlement_id=str(st.id),
        nonce=latest.nonce,
        max_fee_per_gas=fees.max_fee_per_gas,
        tx_hash=signed.tx_hash,
    )
    txs = [*await transactions(ctx, st.id)]
    if await send_stored(ctx, st, row, txs):
        async with ctx.db.transaction() as s:
            await repo.mark_broadcast(s, row.tx_hash, ctx.clock.now())
    return True


# -- 5. confirm --------------------------------------------------------------------------------


async def confirm_mined(ctx: SettlementContext, report: PassReport) -> None:
    mined = await load(ctx, [MINED])
    if not mined:
        return
    head = await ctx.chain.block_number()
    depth = max(ctx.config.confirmations, 1)
    for st in mined:
        assert st.tx_hash is not None and st.block_number is not None
        found = await ctx.chain.receipt(st.tx_hash)
        if found is None or _moved(st, found):
            await _reorged(ctx, st)
            report.reorged += 1
            continue
        if head - found.block_number + 1 < depth:
            continue
        if found.ok:
            await _confirm(ctx, st)
            report.confirmed += 1
        else:
            await _reverted(ctx, st, found)
            report.reverted += 1


def _moved(st: Settlement, found: Receipt) -> bool:
    if found.block_number != st.block_number:
        return True
    return bool(found.block_hash and st.block_hash and found.block_hash != st.block_hash)


async def _reorged(ctx: SettlementContext, st: Settlement) -> None:
    async with ctx.db.transaction() as s:
        await repo.transition(
            s,
            st.id,
            MINED,
            status=BROADCAST,
            block_number=None,
            block_hash=None,
            updated_at=ctx.clock.now(),
        )
    log.warning("settlement_reorg", settlement_id=str(st.id), block=st.block_number)
    txs = await transactions(ctx, st.id)
    mined = [t for t in txs if t.tx_hash == st.tx_hash] or list(txs[-1:])
    if mined:
        await send_stored(ctx, st, mined[0], txs)


async def _confirm(ctx: SettlementContext, st: Settlement) -> None:
    now = ctx.clock.now()
    async with ctx.db.transaction() as s:
        if await repo.transition(
            s, st.id, MINED, status=CONFIRMED, confirmed_at=now, updated_at=now
        ):
            await repo.settle_entries(s, st.id, now)
            await _emit(ctx, s, "payment.settled", st, block_number=st.block_number)
    log.info("settlement_confirmed", settlement_id=str(st.id), tx_hash=st.tx_hash)


async def _reverted(ctx: SettlementContext, st: Settlement, found: Receipt) -> None:
    error = f"transaction {found.tx_hash} reverted in block {found.block_number}"
    async with ctx.db.transaction() as s:
        if await repo.transition(
            s, st.id, MINED, status=REVERTED, last_error=error, updated_at=ctx.clock.now()
        ):
            await repo.release_entries(s, st.id)
            await _emit(ctx, s, "payment.reverted", st, error=error)
    ctx.raise_alert("settlement_reverted", st, error=error, tx_hash=found.tx_hash)


async def _emit(
    ctx: SettlementContext, s: AsyncSession, kind: str, st: Settlement, **extra: Any
) -> None:
    """Tell the payer and the payee (accounts that are addresses) in this transaction."""
    if ctx.events is None:
        return
    data = {
        "settlement_id": str(st.id),
        "payer": st.payer,
        "payee": st.payee,
        "amount": str(st.amount),
        "tx_hash": st.tx_hash,
        **extra,
    }
    for owner in dict.fromkeys((st.payee, st.payer)):
        if owner.startswith("0x") and len(owner) == 42:
            await events_service.emit(s, ctx.events, kind, owner, data, str(st.id))
