"""The settlement worker's knobs and pure pieces: its configuration and back-off, the payment
ref, fee-bump arithmetic, the pass report and the crash-hook points."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from parity.chain.ports import Fees
from parity.config import Settings

# Named points where tests inject a crash (the hook raises); see SettlementContext.hook.
HOOK_POINTS = (
    "after_intent",
    "after_sign_before_record",
    "after_sign",
    "after_broadcast",
    "after_receipt",
)
Hook = Callable[[str, uuid.UUID], None]
Alert = Callable[[str, dict[str, Any]], None]


def payment_ref(settlement_id: uuid.UUID) -> str:
    """The settlement's ``bytes32`` ref: ``0x`` + sha256("parity-settlement:<id>")."""
    return "0x" + hashlib.sha256(f"parity-settlement:{settlement_id}".encode()).hexdigest()


@dataclass(frozen=True)
class SettlementConfig:
    batch_entries: int = 100
    confirmations: int = 5
    fee_bump_seconds: float = 120.0
    fee_bump_percent: int = 15
    interval_seconds: float = 5.0
    retry_base_seconds: float = 30.0  # back-off of an intent the chain refused to estimate
    retry_max_seconds: float = 3600.0
    max_entries_per_pass: int = 10_000
    max_fee_per_gas: int = 0  # a fee bump never raises the cap above this (0 = no ceiling)

    @classmethod
    def from_settings(cls, s: Settings) -> SettlementConfig:
        return cls(
            batch_entries=s.settlement_batch_entries,
            confirmations=s.filecoin_confirmations,
            fee_bump_seconds=s.settlement_fee_bump_seconds,
            fee_bump_percent=s.settlement_fee_bump_percent,
            interval_seconds=s.settlement_interval_seconds,
            max_fee_per_gas=s.settlement_max_fee_per_gas,
        )

    def retry_delay(self, tries: int) -> float:
        return float(min(self.retry_base_seconds * 2 ** max(tries - 1, 0), self.retry_max_seconds))


def bumped_fees(old: Fees, suggested: Fees, percent: int) -> Fees:
    """Replacement fees: each cap raised by at least ``percent`` (nodes want ≥ 10 % on both)
    and by at least 1, and never below what the node suggests now."""

    def up(v: int) -> int:
        return max(-(-v * (100 + percent) // 100), v + 1)

    priority = max(up(old.max_priority_fee_per_gas), suggested.max_priority_fee_per_gas)
    return Fees(max(up(old.max_fee_per_gas), suggested.max_fee_per_gas, priority), priority)


@dataclass
class PassReport:
    """What one pass did (for logs and tests)."""

    skipped: bool = False
    unavailable: bool = False
    intents: int = 0
    signed: int = 0
    deferred: int = 0
    broadcast: int = 0
    rebroadcast: int = 0
    bumped: int = 0
    filled: int = 0  # nonces a reset chain lost, used up so held payments can be mined
    mined: int = 0
    reorged: int = 0
    confirmed: int = 0
    reverted: int = 0

    def counts(self) -> dict[str, int]:
        """The non-zero step counters."""
        return {
            k: v
            for k, v in vars(self).items()
            if isinstance(v, int) and not isinstance(v, bool) and v
        }

    def total(self) -> int:
        """Everything the pass did, all steps together."""
        return sum(self.counts().values())
