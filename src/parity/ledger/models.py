"""Ledger, escrow and settlement rows (ARCHITECTURE §6). Never pruned.

Accounts are stake ids (:func:`parity.chain.stake_ids.stake_id`): the lowercase ``0x`` address,
or a device id under ``STAKE_ID_MODE=device``. Amounts are ``int`` base units stored with
:class:`~parity.db.types.TokenAmount` (NUMERIC(78,0) / decimal TEXT), so they are summed in
Python, never in SQL.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from parity.db.base import Base
from parity.db.types import TokenAmount


class Reservation(Base):
    """Escrow: the maximum cost of a piece of work, held from its creation until it ends
    (``consumed`` by the posting that bills it, or ``released`` when it ends unbilled)."""

    __tablename__ = "ledger_reservations"
    __table_args__ = (
        UniqueConstraint("source_type", "source_id"),
        Index("ix_ledger_reservations_account_status", "account", "status"),
        Index("ix_ledger_reservations_account_created", "account", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    account: Mapped[str] = mapped_column(String(80))
    source_type: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(TokenAmount)
    # The price the work was reserved at (base units as strings): metering bills at this price.
    price: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(12))  # open | consumed | released
    created_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]


class Posting(Base):
    """One double-entry posting: its entries sum to zero. Unique per (source, id, kind), so a
    retried completion can never post twice."""

    __tablename__ = "ledger_postings"
    __table_args__ = (UniqueConstraint("source_type", "source_id", "kind"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    source_type: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(24))
    # What was metered (seconds, resources, price snapshot), for statements and disputes.
    facts: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]


class Entry(Base):
    """One leg of a posting. Debits are negative. A credit names the ``counterparty`` whose
    stake pays it; the settlement that moves those tokens on chain is ``settlement_id``.
    ``settled_at`` is set when that settlement is confirmed (for a debit: when every credit of
    its posting is)."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_account_created", "account", "created_at"),
        Index("ix_ledger_entries_account_settled", "account", "settled_at"),
        Index("ix_ledger_entries_settlement", "settlement_id"),
        Index("ix_ledger_entries_posting", "posting_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    posting_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ledger_postings.id"))
    account: Mapped[str] = mapped_column(String(80))
    role: Mapped[str] = mapped_column(String(12))  # payer | payee | protocol
    amount: Mapped[int] = mapped_column(TokenAmount)
    counterparty: Mapped[str | None] = mapped_column(String(80))
    settlement_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("settlements.id"))
    settled_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class Settlement(Base):
    """One on-chain payment ``payer → payee`` for a set of credit entries (the intent).

    status: ``pending`` (intent, nothing signed) → ``signed`` (raw tx stored) → ``broadcast``
    → ``mined`` (receipt seen) → ``confirmed`` (at FILECOIN_CONFIRMATIONS depth); a receipt
    that reverted, once at that depth → ``reverted`` (its entries are unsettled again);
    ``failed`` when the signer's nonce was taken by a transaction this server did not sign
    (entries stay attached; an alert is raised) → ``released`` when an operator returns its
    entries to unsettled (``released_by``/``released_at``), to be paid by a new settlement. A
    call the chain refuses before signing (the payer's stake is short) stays ``pending`` with
    ``last_error`` and a back-off."""

    __tablename__ = "settlements"
    __table_args__ = (
        UniqueConstraint("ref"),
        Index("ix_settlements_status", "status"),
        Index("ix_settlements_payee_created", "payee", "created_at"),
        Index("ix_settlements_payer_created", "payer", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    payer: Mapped[str] = mapped_column(String(80))
    payee: Mapped[str] = mapped_column(String(80))
    amount: Mapped[int] = mapped_column(TokenAmount)
    ref: Mapped[str] = mapped_column(String(66))  # 0x + 32 bytes hex; transferPaymentRef's ref
    status: Mapped[str] = mapped_column(String(12))
    nonce: Mapped[int | None] = mapped_column(BigInteger)
    tx_hash: Mapped[str | None] = mapped_column(String(66))  # the latest signed transaction
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    block_hash: Mapped[str | None] = mapped_column(String(66))
    tries: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]
    released_by: Mapped[str | None] = mapped_column(String(42))  # the operator's address
    released_at: Mapped[datetime | None]


class SettlementTx(Base):
    """A signed transaction of a settlement, stored before it is broadcast. A settlement has
    more than one only through same-nonce fee bumps."""

    __tablename__ = "settlement_transactions"
    __table_args__ = (
        UniqueConstraint("tx_hash"),
        Index("ix_settlement_transactions_settlement", "settlement_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    settlement_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("settlements.id"))
    tx_hash: Mapped[str] = mapped_column(String(66))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    sender: Mapped[str] = mapped_column(String(42))
    nonce: Mapped[int] = mapped_column(BigInteger)
    gas: Mapped[int] = mapped_column(BigInteger)
    max_fee_per_gas: Mapped[int] = mapped_column(TokenAmount)
    max_priority_fee_per_gas: Mapped[int] = mapped_column(TokenAmount)
    created_at: Mapped[datetime]
    broadcast_at: Mapped[datetime | None]


class SignerNonce(Base):
    """The next nonce of a settlement signer, allocated in the database (one row per signer)."""

    __tablename__ = "signer_nonces"

    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    next_nonce: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]
