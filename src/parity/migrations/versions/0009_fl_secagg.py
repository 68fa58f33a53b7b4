"""fl secagg: SecAgg+ round state and stage messages

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 15:35:01.222757
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import parity.db.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fl_secagg_messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("round_id", sa.Uuid(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("sender_index", sa.Integer(), nullable=True),
        sa.Column("recipient_index", sa.Integer(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["fl_rounds.id"],
            name=op.f("fk_fl_secagg_messages_round_id_fl_rounds"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["fl_sessions.id"],
            name=op.f("fk_fl_secagg_messages_session_id_fl_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fl_secagg_messages")),
    )
    with op.batch_alter_table("fl_secagg_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_fl_secagg_messages_session_id"), ["session_id"], unique=False
        )
        batch_op.create_index(
            "ix_fl_secagg_messages_stage_recipient",
            ["round_id", "stage", "recipient_index"],
            unique=False,
        )
        batch_op.create_index(
            "ix_fl_secagg_messages_stage_sender",
            ["round_id", "stage", "sender_index"],
            unique=False,
        )

    op.create_table(
        "fl_secagg_rounds",
        sa.Column("round_id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("stage_deadline_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("graph_seed", sa.String(length=64), nullable=False),
        sa.Column("vector_size", sa.Integer(), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("survivors", sa.JSON(), nullable=True),
        sa.Column("dropped", sa.JSON(), nullable=True),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["fl_rounds.id"],
            name=op.f("fk_fl_secagg_rounds_round_id_fl_rounds"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["fl_sessions.id"],
            name=op.f("fk_fl_secagg_rounds_session_id_fl_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("round_id", name=op.f("pk_fl_secagg_rounds")),
    )
    with op.batch_alter_table("fl_secagg_rounds", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_fl_secagg_rounds_session_id"), ["session_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_fl_secagg_rounds_stage"), ["stage"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fl_secagg_rounds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_secagg_rounds_stage"))
        batch_op.drop_index(batch_op.f("ix_fl_secagg_rounds_session_id"))

    op.drop_table("fl_secagg_rounds")
    with op.batch_alter_table("fl_secagg_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_fl_secagg_messages_stage_sender")
        batch_op.drop_index("ix_fl_secagg_messages_stage_recipient")
        batch_op.drop_index(batch_op.f("ix_fl_secagg_messages_session_id"))

    op.drop_table("fl_secagg_messages")
