"""storage: stored objects (CIDv1 with its CIDv0 alias), account pins, per-account usage

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import parity.db.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_objects",
        sa.Column("cid", sa.String(length=100), nullable=False),
        sa.Column("cid_v0", sa.String(length=64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("cid", name=op.f("pk_storage_objects")),
    )
    with op.batch_alter_table("storage_objects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_storage_objects_cid_v0"), ["cid_v0"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_storage_objects_created_at"), ["created_at"], unique=False
        )

    op.create_table(
        "storage_pins",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("cid", sa.String(length=100), nullable=False),
        sa.Column("owner_address", sa.String(length=42), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["cid"], ["storage_objects.cid"], name=op.f("fk_storage_pins_cid_storage_objects")
        ),
        sa.ForeignKeyConstraint(
            ["owner_address"],
            ["accounts.address"],
            name=op.f("fk_storage_pins_owner_address_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_pins")),
        sa.UniqueConstraint("owner_address", "cid", name=op.f("uq_storage_pins_owner_address_cid")),
    )
    with op.batch_alter_table("storage_pins", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_storage_pins_cid"), ["cid"], unique=False)
        batch_op.create_index(
            "ix_storage_pins_owner_created", ["owner_address", "created_at"], unique=False
        )

    op.create_table(
        "storage_usage",
        sa.Column("owner_address", sa.String(length=42), nullable=False),
        sa.Column("pinned_bytes", sa.BigInteger(), nullable=False),
        sa.Column("pin_count", sa.Integer(), nullable=False),
        sa.Column("updated_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_address"],
            ["accounts.address"],
            name=op.f("fk_storage_usage_owner_address_accounts"),
        ),
        sa.PrimaryKeyConstraint("owner_address", name=op.f("pk_storage_usage")),
    )


def downgrade() -> None:
    op.drop_table("storage_usage")
    with op.batch_alter_table("storage_pins", schema=None) as batch_op:
        batch_op.drop_index("ix_storage_pins_owner_created")
        batch_op.drop_index(batch_op.f("ix_storage_pins_cid"))

    op.drop_table("storage_pins")
    with op.batch_alter_table("storage_objects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_storage_objects_created_at"))
        batch_op.drop_index(batch_op.f("ix_storage_objects_cid_v0"))

    op.drop_table("storage_objects")
