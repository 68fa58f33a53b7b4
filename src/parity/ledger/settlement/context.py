"""What every settlement step receives: its collaborators, the crash hook and the alert channel,
and the two reads all steps share. The steps are plain functions over this context
(:mod:`~parity.ledger.settlement.signing`, :mod:`~parity.ledger.settlement.tracking`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from parity.chain.ports import ChainClient, Signer
from parity.clock import Clock
from parity.db.session import Database
from parity.events.service import EventDeps
from parity.ledger.models import Settlement, SettlementTx
from parity.ledger.settlement import repository as repo
from parity.ledger.settlement.policy import Alert, Hook, SettlementConfig
from parity.logging import get_logger

log = get_logger("parity.settlement")


@dataclass
class SettlementContext:
    db: Database
    chain: ChainClient
    signer: Signer
    clock: Clock
    config: SettlementConfig = field(default_factory=SettlementConfig)
    hook: Hook | None = None  # called at HOOK_POINTS; raising there simulates a crash
    alert: Alert | None = None
    events: EventDeps | None = None  # payment.settled / payment.reverted for payer and payee
    missing_contract: bool = False  # no StakeWallet code: alerted, nothing sent until it is back

    @property
    def address(self) -> str:
        """The signer's address, lowercase (the nonce row's key)."""
        return self.signer.address.lower()

    def at(self, point: str, settlement_id: uuid.UUID) -> None:
        if self.hook is not None:
            self.hook(point, settlement_id)

    def raise_alert(self, kind: str, st: Settlement, **fields: Any) -> None:
        data = {
            "settlement_id": str(st.id),
            "payer": st.payer,
            "payee": st.payee,
            "amount": str(st.amount),
            **fields,
        }
        self.send_alert(kind, data)

    def send_alert(self, kind: str, data: dict[str, Any]) -> None:
        log.error("settlement_alert", kind=kind, **data)
        if self.alert is not None:
            try:
                self.alert(kind, data)
            except Exception as exc:  # an alert channel must not stop settlement
                log.warning("settlement_alert_failed", error=type(exc).__name__)


async def load(ctx: SettlementContext, statuses: Sequence[str]) -> Sequence[Settlement]:
    async with ctx.db.read_session() as s:
        return await repo.by_status(s, statuses)


async def transactions(ctx: SettlementContext, settlement_id: uuid.UUID) -> Sequence[SettlementTx]:
    async with ctx.db.read_session() as s:
        return await repo.transactions(s, settlement_id)
