"""ledger, escrow and settlement

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 23:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import parity.db.types

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_postings",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("source_type", sa.String(length=16), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_postings")),
        sa.UniqueConstraint(
            "source_type",
            "source_id",
            "kind",
            name=op.f("uq_ledger_postings_source_type_source_id_kind"),
        ),
    )
    op.create_table(
        "ledger_reservations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account", sa.String(length=80), nullable=False),
        sa.Column("source_type", sa.String(length=16), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("amount", parity.db.types.TokenAmount(length=80), nullable=False),
        sa.Column("price", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_reservations")),
        sa.UniqueConstraint(
            "source_type", "source_id", name=op.f("uq_ledger_reservations_source_type_source_id")
        ),
    )
    with op.batch_alter_table("ledger_reservations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ledger_reservations_account_created", ["account", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_ledger_reservations_account_status", ["account", "status"], unique=False
        )

    op.create_table(
        "settlements",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("payer", sa.String(length=80), nullable=False),
        sa.Column("payee", sa.String(length=80), nullable=False),
        sa.Column("amount", parity.db.types.TokenAmount(length=80), nullable=False),
        sa.Column("ref", sa.String(length=66), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=True),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("block_hash", sa.String(length=66), nullable=True),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlements")),
        sa.UniqueConstraint("ref", name=op.f("uq_settlements_ref")),
    )
    with op.batch_alter_table("settlements", schema=None) as batch_op:
        batch_op.create_index("ix_settlements_payee_created", ["payee", "created_at"], unique=False)
        batch_op.create_index("ix_settlements_payer_created", ["payer", "created_at"], unique=False)
        batch_op.create_index("ix_settlements_status", ["status"], unique=False)

    op.create_table(
        "signer_nonces",
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("next_nonce", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_signer_nonces")),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("posting_id", sa.Uuid(), nullable=False),
        sa.Column("account", sa.String(length=80), nullable=False),
        sa.Column("role", sa.String(length=12), nullable=False),
        sa.Column("amount", parity.db.types.TokenAmount(length=80), nullable=False),
        sa.Column("counterparty", sa.String(length=80), nullable=True),
        sa.Column("settlement_id", sa.Uuid(), nullable=True),
        sa.Column("settled_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["posting_id"],
            ["ledger_postings.id"],
            name=op.f("fk_ledger_entries_posting_id_ledger_postings"),
        ),
        sa.ForeignKeyConstraint(
            ["settlement_id"],
            ["settlements.id"],
            name=op.f("fk_ledger_entries_settlement_id_settlements"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ledger_entries_account_created", ["account", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_ledger_entries_account_settled", ["account", "settled_at"], unique=False
        )
        batch_op.create_index("ix_ledger_entries_posting", ["posting_id"], unique=False)
        batch_op.create_index("ix_ledger_entries_settlement", ["settlement_id"], unique=False)

    op.create_table(
        "settlement_transactions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("settlement_id", sa.Uuid(), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("sender", sa.String(length=42), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("gas", sa.BigInteger(), nullable=False),
        sa.Column("max_fee_per_gas", parity.db.types.TokenAmount(length=80), nullable=False),
        sa.Column(
            "max_priority_fee_per_gas", parity.db.types.TokenAmount(length=80), nullable=False
        ),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("broadcast_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["settlement_id"],
            ["settlements.id"],
            name=op.f("fk_settlement_transactions_settlement_id_settlements"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_transactions")),
        sa.UniqueConstraint("tx_hash", name=op.f("uq_settlement_transactions_tx_hash")),
    )
    with op.batch_alter_table("settlement_transactions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_settlement_transactions_settlement", ["settlement_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("settlement_transactions", schema=None) as batch_op:
        batch_op.drop_index("ix_settlement_transactions_settlement")

    op.drop_table("settlement_transactions")
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entries_settlement")
        batch_op.drop_index("ix_ledger_entries_posting")
        batch_op.drop_index("ix_ledger_entries_account_settled")
        batch_op.drop_index("ix_ledger_entries_account_created")

    op.drop_table("ledger_entries")
    op.drop_table("signer_nonces")
    with op.batch_alter_table("settlements", schema=None) as batch_op:
        batch_op.drop_index("ix_settlements_status")
        batch_op.drop_index("ix_settlements_payer_created")
        batch_op.drop_index("ix_settlements_payee_created")

    op.drop_table("settlements")
    with op.batch_alter_table("ledger_reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_reservations_account_status")
        batch_op.drop_index("ix_ledger_reservations_account_created")

    op.drop_table("ledger_reservations")
    op.drop_table("ledger_postings")
