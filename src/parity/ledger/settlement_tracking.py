"""Steps 4 and 5 of the settlement worker: receipts (re-sending a dropped transaction, same-nonce
fee bumps for a held one), then confirmation at depth, with the receipt re-checked for a reorg
and a reverted receipt returning the entries to unsettled (see :mod:`parity.ledger.settlement`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.chain.ports import Fees, Receipt
from parity.events import service as events_service
from parity.ledger import settlement_repository as repo
from parity.ledger.models import Settlement, SettlementTx
from parity.ledger.settlement_base import WorkerBase, log
from parity.ledger.settlement_policy import PassReport, bumped_fees
from parity.ledger.settlement_repository import BROADCAST, CONFIRMED, MINED, REVERTED


class TrackingSteps(WorkerBase):
    # -- 4. receipt ----------------------------------------------------------------------------

    async def _check_receipts(self, report: PassReport, *, rebroadcast: bool) -> None:
        for st in await self._load([BROADCAST]):
            txs = await self._transactions(st.id)
            if not txs:
                continue
            found = await self._find_receipt(txs)
            if found is not None:
                self._at("after_receipt", st.id)
                async with self.db.transaction() as s:
                    await repo.transition(
                        s,
                        st.id,
                        BROADCAST,
                        status=MINED,
                        tx_hash=found.tx_hash,
                        block_number=found.block_number,
                        block_hash=found.block_hash,
                        updated_at=self.clock.now(),
                    )
                report.mined += 1
                continue
            latest = txs[-1]
            dropped = await self.chain.get_transaction(latest.tx_hash) is None
            if dropped or rebroadcast:  # the node lost it, or may have (we restarted)
                sent = await self._send(st, latest, txs)
                report.rebroadcast += sent
                if dropped or not sent:
                    continue
            waited = self.clock.now() - (latest.broadcast_at or latest.created_at)
            if waited >= timedelta(seconds=self.config.fee_bump_seconds) and await self._bump(
                st, latest
            ):
                report.bumped += 1

    async def _bump(self, st: Settlement, latest: SettlementTx) -> bool:
        """Replace the pending transaction: same nonce, same gas, higher fees; stored first."""
        call = await self._call(st)
        old = Fees(latest.max_fee_per_gas, latest.max_priority_fee_per_gas)
        fees = bumped_fees(old, await self.chain.suggest_fees(), self.config.fee_bump_percent)
        ceiling = self.config.max_fee_per_gas
        if ceiling and fees.max_fee_per_gas > ceiling:
            # Keep waiting at the current price rather than outbid the configured ceiling.
            log.warning(
                "settlement_fee_ceiling",
                settlement_id=str(st.id),
                wanted_max_fee_per_gas=fees.max_fee_per_gas,
                ceiling=ceiling,
            )
            return False
        now = self.clock.now()
        async with self.db.transaction() as s:
            current = await repo.get(s, st.id, lock=True)
            if current is None or current.status != BROADCAST:
                return False
            signed = await self.chain.build_and_sign(
                self.signer, call, nonce=latest.nonce, fees=fees, gas=latest.gas
            )
            self._at("after_sign_before_record", st.id)
            row = self._tx_row(st.id, signed, now)
            await repo.add_transaction(s, row)
            await repo.transition(s, st.id, BROADCAST, tx_hash=signed.tx_hash, updated_at=now)
        log.warning(
            "settlement_fee_bump",
            settlement_id=str(st.id),
            nonce=latest.nonce,
            max_fee_per_gas=fees.max_fee_per_gas,
            tx_hash=signed.tx_hash,
        )
        txs = [*await self._transactions(st.id)]
        if await self._send(st, row, txs):
            async with self.db.transaction() as s:
                await repo.mark_broadcast(s, row.tx_hash, self.clock.now())
        return True

    # -- 5. confirm ----------------------------------------------------------------------------

    async def _confirm_mined(self, report: PassReport) -> None:
        mined = await self._load([MINED])
        if not mined:
            return
        head = await self.chain.block_number()
        depth = max(self.config.confirmations, 1)
        for st in mined:
            assert st.tx_hash is not None and st.block_number is not None
            found = await self.chain.receipt(st.tx_hash)
            if found is None or self._moved(st, found):
                await self._reorged(st)
                report.reorged += 1
                continue
            if head - found.block_number + 1 < depth:
                continue
            if found.ok:
                await self._confirm(st)
                report.confirmed += 1
            else:
                await self._reverted(st, found)
                report.reverted += 1

    @staticmethod
    def _moved(st: Settlement, found: Receipt) -> bool:
        if found.block_number != st.block_number:
            return True
        return bool(found.block_hash and st.block_hash and found.block_hash != st.block_hash)

    async def _reorged(self, st: Settlement) -> None:
        async with self.db.transaction() as s:
            await repo.transition(
                s,
                st.id,
                MINED,
                status=BROADCAST,
                block_number=None,
                block_hash=None,
                updated_at=self.clock.now(),
            )
        log.warning("settlement_reorg", settlement_id=str(st.id), block=st.block_number)
        txs = await self._transactions(st.id)
        mined = [t for t in txs if t.tx_hash == st.tx_hash] or list(txs[-1:])
        if mined:
            await self._send(st, mined[0], txs)

    async def _confirm(self, st: Settlement) -> None:
        now = self.clock.now()
        async with self.db.transaction() as s:
            if await repo.transition(
                s, st.id, MINED, status=CONFIRMED, confirmed_at=now, updated_at=now
            ):
                await repo.settle_entries(s, st.id, now)
                await self._emit(s, "payment.settled", st, block_number=st.block_number)
        log.info("settlement_confirmed", settlement_id=str(st.id), tx_hash=st.tx_hash)

    async def _reverted(self, st: Settlement, found: Receipt) -> None:
        error = f"transaction {found.tx_hash} reverted in block {found.block_number}"
        async with self.db.transaction() as s:
            if await repo.transition(
                s, st.id, MINED, status=REVERTED, last_error=error, updated_at=self.clock.now()
            ):
                await repo.release_entries(s, st.id)
                await self._emit(s, "payment.reverted", st, error=error)
        self._raise_alert("settlement_reverted", st, error=error, tx_hash=found.tx_hash)

    async def _emit(self, s: AsyncSession, kind: str, st: Settlement, **extra: Any) -> None:
        """Tell the payer and the payee (accounts that are addresses) in this transaction."""
        if self.events is None:
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
                await events_service.emit(s, self.events, kind, owner, data, str(st.id))
