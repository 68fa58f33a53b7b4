"""Steps 1 to 3 of the settlement worker: an intent per (payer, payee) group of unsettled
credits, the nonce allocated and the transaction signed and stored in one database
transaction, then the stored raw transaction broadcast (see :mod:`parity.ledger.settlement`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from parity.chain.errors import ChainError, ChainRetryableError
from parity.ledger import settlement_repository as repo
from parity.ledger.models import Entry, Settlement, SignerNonce
from parity.ledger.settlement_base import WorkerBase, log
from parity.ledger.settlement_policy import PassReport, payment_ref
from parity.ledger.settlement_repository import BROADCAST, CONFIRMED, PENDING, SIGNED


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


class SigningSteps(WorkerBase):
    # -- 1. intent -----------------------------------------------------------------------------

    async def _make_intents(self, report: PassReport) -> None:
        async with self.db.read_session() as s:
            entries = await repo.unsettled_credits(s, self.config.max_entries_per_pass)
        for payer, payee, chunk in _groups(entries, self.config.batch_entries):
            settlement_id = await self._make_intent(payer, payee, chunk)
            if settlement_id is not None:
                report.intents += 1
                self._at("after_intent", settlement_id)

    async def _make_intent(self, payer: str, payee: str, chunk: list[Entry]) -> uuid.UUID | None:
        now = self.clock.now()
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
            async with self.db.transaction() as s:
                await repo.add_settlement(s, st)
                if await repo.attach_entries(s, sid, [e.id for e in chunk]) != len(chunk):
                    raise _Raced
                if free:
                    await repo.settle_entries(s, sid, now)
        except _Raced:
            log.info("settlement_intent_raced", payer=payer, payee=payee)
            return None
        return sid

    # -- 2. sign -------------------------------------------------------------------------------

    def _due(self, st: Settlement, now: datetime) -> bool:
        if st.tries == 0:
            return True
        return st.updated_at + timedelta(seconds=self.config.retry_delay(st.tries)) <= now

    async def _sign_pending(self, report: PassReport) -> None:
        now = self.clock.now()
        for st in await self._load([PENDING]):
            if self._due(st, now):
                await self._sign(st, report)

    async def _sign(self, st: Settlement, report: PassReport) -> None:
        call = await self._call(st)
        async with self.db.read_session() as s:
            in_flight = await repo.in_flight_amount(s, st.payer)
        # Our own unmined payments from this stake come first: one that fits only if they fail
        # would revert on chain, so it waits instead.
        stake = await self.chain.stake_of(st.payer)
        if stake < in_flight + st.amount:
            await self._defer(
                st, f"payer stake short: {stake} staked, {in_flight} in flight, {st.amount} due"
            )
            report.deferred += 1
            return
        chain_next = await self.chain.transaction_count(self.address, pending=True)
        try:  # estimation runs the call: a payment the contract refuses stops here
            probe = await self.chain.build_and_sign(self.signer, call, nonce=chain_next)
        except ChainRetryableError:
            raise
        except ChainError as exc:
            await self._defer(st, str(exc))
            report.deferred += 1
            return
        now = self.clock.now()
        async with self.db.transaction() as s:
            row = await repo.lock_nonce(s, self.address)
            current = await repo.get(s, st.id, lock=True)
            if current is None or current.status != PENDING:
                return
            nonce = chain_next if row is None else max(row.next_nonce, chain_next)
            # Gas, fees and nonce given: this only signs, locally.
            signed = await self.chain.build_and_sign(
                self.signer, call, nonce=nonce, fees=probe.fees, gas=probe.gas
            )
            self._at("after_sign_before_record", st.id)
            await repo.add_transaction(s, self._tx_row(st.id, signed, now))
            if row is None:
                await repo.add_nonce(
                    s, SignerNonce(address=self.address, next_nonce=nonce + 1, updated_at=now)
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
        self._at("after_sign", st.id)

    async def _defer(self, st: Settlement, error: str) -> None:
        tries = st.tries + 1
        async with self.db.transaction() as s:
            await repo.transition(
                s,
                st.id,
                PENDING,
                tries=tries,
                last_error=error[:2000],
                updated_at=self.clock.now(),
            )
        self._raise_alert(
            "settlement_refused",
            st,
            error=error,
            tries=tries,
            retry_in_seconds=self.config.retry_delay(tries),
        )

    # -- 3. broadcast --------------------------------------------------------------------------

    async def _broadcast_signed(self, report: PassReport) -> None:
        for st in await self._load([SIGNED]):
            txs = await self._transactions(st.id)
            if not txs or not await self._send(st, txs[-1], txs):
                continue
            self._at("after_broadcast", st.id)
            now = self.clock.now()
            async with self.db.transaction() as s:
                await repo.transition(s, st.id, SIGNED, status=BROADCAST, updated_at=now)
                await repo.mark_broadcast(s, txs[-1].tx_hash, now)
            report.broadcast += 1
