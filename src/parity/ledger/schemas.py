from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

AMOUNT = "Token base units (decimal string)"


class BalanceRead(BaseModel):
    account: str = Field(description="The stake id (lowercase 0x address)")
    stake: str = Field(description=f"On-chain StakeWallet balance. {AMOUNT}")
    unsettled_debits: str = Field(
        description="Owed for finished work and not yet in `stake`: not yet paid on chain, or "
        f"paid after the stake figure was read. {AMOUNT}"
    )
    reserved: str = Field(description=f"Held in escrow by open work. {AMOUNT}")
    available: str = Field(
        description=f"stake - unsettled_debits - reserved (may be negative). {AMOUNT}"
    )
    pending_earnings: str = Field(description=f"Earned, not yet paid on chain. {AMOUNT}")
    settled_earnings: str = Field(description=f"Earned and paid on chain. {AMOUNT}")
    decimals: int
    symbol: str
    display: dict[str, str] = Field(description="The same amounts in token units")


class EntryRead(BaseModel):
    id: uuid.UUID
    posting_id: uuid.UUID
    source_type: str
    source_id: str
    kind: str
    account: str
    role: str = Field(description="payer | payee | protocol")
    amount: str = Field(description=f"Negative for a debit. {AMOUNT}")
    counterparty: str | None
    settlement_id: uuid.UUID | None
    settled_at: datetime | None
    created_at: datetime


class ReservationRead(BaseModel):
    id: uuid.UUID
    account: str
    source_type: str
    source_id: str
    amount: str = Field(description=AMOUNT)
    price: dict[str, Any] = Field(description="The price snapshot the work was reserved at")
    status: str = Field(description="open | consumed | released")
    created_at: datetime
    closed_at: datetime | None


class PayoutRead(BaseModel):
    id: uuid.UUID
    payer: str
    payee: str
    amount: str = Field(description=AMOUNT)
    status: str = Field(
        description="pending | signed | broadcast | mined | confirmed | reverted | failed "
        "| released"
    )
    tx_hash: str | None
    block_number: int | None
    last_error: str | None
    created_at: datetime
    confirmed_at: datetime | None


SettlementStatus = Literal[
    "pending", "signed", "broadcast", "mined", "confirmed", "reverted", "failed", "released"
]


class SettlementRead(PayoutRead):
    """A settlement as operators see it: a payout plus its chain and release details."""

    ref: str = Field(description="bytes32 ref of transferPaymentRef (0x + 64 hex)")
    nonce: int | None = Field(description="The signer's nonce; null until signed")
    block_hash: str | None
    tries: int = Field(description="Refused estimations so far (each backs off further)")
    updated_at: datetime
    released_by: str | None = Field(description="The operator who released a failed settlement")
    released_at: datetime | None
