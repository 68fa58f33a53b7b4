"""Steps 1 to 3 of a settlement pass: an intent per (payer, payee) group of unsettled credits,
the nonce allocated and the transaction signed and stored in one database transaction, then
the stored raw transaction broadcast (see :mod:`parity.ledger.settlement`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from parity.chain.errors import ChainError, ChainRetryableError
from parity.ledger.models import Entry, Settlement, SignerNonce
from parity.ledger.settlement import repository as repo
from parity.ledger.settlement.context import SettlementContext, load, log, transactions
from parity.ledger.settlement.policy import PassReport, payment_ref
from parity.ledger.settlement.repository import BROADCAST, CONFIRMED, PENDING, SIGNED
from parity.ledger.settlement.sending import payment_call, send_stored, tx_row


class _Raced(Exception):
    """Another writer attached an entry first: roll the intent back."""


def _groups(entries: Iterable[Entry], size: int) -> Iterable[tuple[str, str, list[Entry]]]:
    by_pair: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        if e.counterparty is None or e.amount < 0:
            continue
        by_pair.setdefault((e.counterparty, e.account), []).append(e)
    for (payer, payee), group in by_pair.items():
        for i in range(0, len(group), size):
            yield payer, payee, group[i : i + size]


# -- 1. intent ---------------------------------------------------------------------------------


async def make_intents(ctx: SettlementContext, report: PassReport) -> None:
    async with ctx.db.read_session() as s:
        entries = await repo.unsettled_credits(s, ctx.config.max_entries_per_pass)
    for payer, payee, chunk in _groups(entries, ctx.config.batch_entries):
        settlement_id = await _make_intent(ctx, payer, payee, chunk)
        if settlement_id is not None:
            report.intents += 1
            ctx.at("after_intent", settlement_id)


async def _make_intent(
    ctx: SettlementContext, payer: str, payee: str, chunk: list[Entry]
) -> uuid.UUID | None:
    now = ctx.clock.now()
    sid = uuid.uuid4()
    total = sum(e.amount for e in chunk)
    free = payer == payee or total == 0  # nothing moves on chain
    st = Settlement(
        id=sid,
        payer=payer,
        payee=payee,
        amount=total,
        ref=payment_ref(sid),
        status=CONFIRMED if free else PENDING,
        tries=0,
        created_at=now,
        updated_at=now,
        confirmed_at=now if free else None,
    )
    try:
        async with ctx.db.transaction() as s:
            await repo.add_settlement(s, st)
            if await repo.attach_entries(s, sid, [e.id for e in chunk]) != len(chunk):
                raise _Raced
            if free:
                await repo.settle_entries(s, sid, now)
    except _Raced:
        log.info("settlement_intent_raced", payer=payer, payee=payee)
        return None
    return sid


# -- 2. sign -----------------------------------------------------------------------------------


def _due(ctx: SettlementContext, st: Settlement, now: datetime) -> bool:
    if st.tries == 0:
        return True
    return st.updated_at + timedelta(seconds=ctx.config.retry_delay(st.tries)) <= now


async def sign_pending(ctx: SettlementContext, report: PassReport) -> None:
    now = ctx.clock.now()
    for st in await load(ctx, [PENDING]):
        if _due(ctx, st, now):
            await _sign(ctx, st, report)


async def _sign(ctx: SettlementContext, st: Settlement, report: PassReport) -> None:
    call = await payment_call(ctx, st)
    async with ctx.db.read_session() as s:
        in_flight = await repo.in_flight_amount(s, st.payer)
    # Our own unmined payments from this stake come first: one that fits only if they fail
    # would revert on chain, so it waits instead.
    stake = await ctx.chain.stake_of(st.payer)
    if stake < in_flight + st.amount:
        await _defer(
            ctx, st, f"payer stake short: {stake} staked, {in_flight} in flight, {st.amount} due"
        )
        report.deferred += 1
        return
    address = ctx.address
    chain_next = await ctx.chain.transaction_count(address, pending=True)
    try:  # estimation runs the call: a payment the contract refuses stops here
        probe = await ctx.chain.build_and_sign(ctx.signer, call, nonce=chain_next)
    except ChainRetryableError:
        raise
    except ChainError as exc:
        await _defer(ctx, st, str(exc))
        report.deferred += 1
        return
    now = ctx.clock.now()
    async with ctx.db.transaction() as s:
        row = await repo.lock_nonce(s, address)
        current = await repo.get(s, st.id, lock=True)
        if current is None or current.status != PENDING:
            return
        nonce = chain_next if row is None else max(row.next_nonce, chain_next)
        # Gas, fees and nonce given: this only signs, locally.
        signed = await ctx.chain.build_and_sign(
            ctx.signer, call, nonce=nonce, fees=probe.fees, gas=probe.gas
        )
        ctx.at("after_sign_before_record", st.id)
        await repo.add_transaction(s, tx_row(st.id, signed, now))
        if row is None:
            await repo.add_nonce(
                s, SignerNonce(address=address, next_nonce=nonce + 1, updated_at=now)
            )
        else:
            row.next_nonce, row.updated_at = nonce + 1, now
        await repo.transition(
            s,
            st.id,
            PENDING,
            status=SIGNED,
            nonce=nonce,
            tx_hash=signed.tx_hash,
            last_error=None,
            updated_at=now,
        )
    report.signed += 1
    log.info("settlement_signed", settlement_id=str(st.id), nonce=nonce, tx_hash=signed.tx_hash)
    ctx.at("after_sign", st.id)


async def _defer(ctx: SettlementContext, st: Settlement, error: str) -> None:
    tries = st.tries + 1
    async with ctx.db.transaction() as s:
        await repo.transition(
            s,
            st.id,
            PENDING,
            tries=tries,
            last_error=error[:2000],
            updated_at=ctx.clock.now(),
        )
    ctx.raise_alert(
        "settlement_refused",
        st,
        error=error,
        tries=tries,
        retry_in_seconds=ctx.config.retry_delay(tries),
    )


# -- 3. broadcast ------------------------------------------------------------------------------


async def broadcast_signed(ctx: SettlementContext, report: PassReport) -> None:
    for st in await load(ctx, [SIGNED]):
        txs = await transactions(ctx, st.id)
        if not txs or not await send_stored(ctx, st, txs[-1], txs):
            continue
        ctx.at("after_broadcast", st.id)
        now = ctx.clock.now()
        async with ctx.db.transaction() as s:
            await repo.transition(s, st.id, SIGNED, status=BROADCAST, updated_at=now)
            await repo.mark_broadcast(s, txs[-1].tx_hash, now)
        report.broadcast += 1
