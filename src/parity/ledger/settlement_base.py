"""What every step of the settlement worker shares: its collaborators, the crash hook and
alerts, reading settlements, building the payment call, storing a signed transaction, and
sending a stored raw transaction (which is also where a foreign use of our nonce shows up).

The steps themselves live in :mod:`parity.ledger.settlement_signing` (intent, sign,
broadcast) and :mod:`parity.ledger.settlement_tracking` (receipt, fee bump, confirm); the
worker that runs them is :class:`parity.ledger.settlement.SettlementWorker`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from parity.chain.errors import ChainError, ChainRetryableError, NonceTooLow
from parity.chain.ports import (
    Call,
    ChainClient,
    Receipt,
    SignedTx,
    Signer,
    transfer_payment_call,
    transfer_payment_ref_call,
)
from parity.clock import Clock
from parity.db.session import Database
from parity.events.service import EventDeps
from parity.ledger import settlement_repository as repo
from parity.ledger.models import Settlement, SettlementTx
from parity.ledger.settlement_policy import Alert, Hook, SettlementConfig
from parity.ledger.settlement_repository import BROADCAST, FAILED, SIGNED
from parity.logging import get_logger

log = get_logger("parity.settlement")


class WorkerBase:
    """The state and helpers the step mixins build on."""

    def __init__(
        self,
        db: Database,
        chain: ChainClient,
        signer: Signer,
        clock: Clock,
        config: SettlementConfig | None = None,
        *,
        hook: Hook | None = None,
        alert: Alert | None = None,
        events: EventDeps | None = None,
    ) -> None:
        self.db = db
        self.chain = chain
        self.signer = signer
        self.address = signer.address.lower()
        self.clock = clock
        self.config = config or SettlementConfig()
        self.hook = hook  # called at HOOK_POINTS; raising there simulates a crash
        self.alert = alert
        self.events = events  # payment.settled / payment.reverted for the payer and payee
        self._setup()

    def _setup(self) -> None:
        """State a subclass adds (the worker's loop); nothing here."""

    def _at(self, point: str, settlement_id: uuid.UUID) -> None:
        if self.hook is not None:
            self.hook(point, settlement_id)

    def _raise_alert(self, kind: str, st: Settlement, **fields: Any) -> None:
        data = {
            "settlement_id": str(st.id),
            "payer": st.payer,
            "payee": st.payee,
            "amount": str(st.amount),
            **fields,
        }
        log.error("settlement_alert", kind=kind, **data)
        if self.alert is not None:
            try:
                self.alert(kind, data)
            except Exception as exc:  # an alert channel must not stop settlement
                log.warning("settlement_alert_failed", error=type(exc).__name__)

    async def _load(self, statuses: Sequence[str]) -> Sequence[Settlement]:
        async with self.db.read_session() as s:
            return await repo.by_status(s, statuses)

    async def _transactions(self, settlement_id: uuid.UUID) -> Sequence[SettlementTx]:
        async with self.db.read_session() as s:
            return await repo.transactions(s, settlement_id)

    async def _call(self, st: Settlement) -> Call:
        if await self.chain.supports_payment_ref():
            return transfer_payment_ref_call(
                st.payer, st.payee, st.amount, bytes.fromhex(st.ref[2:])
            )
        return transfer_payment_call(st.payer, st.payee, st.amount)

    @staticmethod
    def _tx_row(settlement_id: uuid.UUID, signed: SignedTx, now: datetime) -> SettlementTx:
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

    async def _find_receipt(self, txs: Sequence[SettlementTx]) -> Receipt | None:
        for tx in reversed(txs):
            found = await self.chain.receipt(tx.tx_hash)
            if found is not None:
                return found
        return None

    async def _send(self, st: Settlement, tx: SettlementTx, txs: Sequence[SettlementTx]) -> bool:
        """Send a stored raw transaction; False when the node refused it (recorded)."""
        try:
            await self.chain.send_raw(tx.raw)
            return True
        except ChainRetryableError:
            raise
        except NonceTooLow:
            # The nonce is used: by one of ours (mined; the receipt step sees it) or by a
            # transaction this worker never signed — then this intent can never be mined.
            if await self._find_receipt(txs) is not None:
                return True
            await self._nonce_taken(st, tx)
            return False
        except ChainError as exc:
            async with self.db.transaction() as s:
                await repo.transition(
                    s,
                    st.id,
                    [SIGNED, BROADCAST],
                    last_error=str(exc)[:2000],
                    updated_at=self.clock.now(),
                )
            log.warning("settlement_send_refused", settlement_id=str(st.id), detail=str(exc))
            return False

    async def _nonce_taken(self, st: Settlement, tx: SettlementTx) -> None:
        error = (
            f"nonce {tx.nonce} of {tx.sender} was used by a transaction this server did not "
            "sign; the entries stay attached until an operator checks the chain and releases "
            "the settlement (POST /api/v1/ledger/settlements/{id}/release)"
        )
        async with self.db.transaction() as s:
            await repo.transition(
                s,
                st.id,
                [SIGNED, BROADCAST],
                status=FAILED,
                last_error=error,
                updated_at=self.clock.now(),
            )
        self._raise_alert("settlement_nonce_taken", st, error=error)
