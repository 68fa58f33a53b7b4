"""fl: sessions, participants, rounds, per-round participant slots; runners.fl_datasets

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 14:37:10.648994
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import parity.db.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fl_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("creator_address", sa.String(length=42), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("model_type", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("current_round", sa.Integer(), nullable=False),
        sa.Column("total_rounds", sa.Integer(), nullable=False),
        sa.Column("min_participants", sa.Integer(), nullable=False),
        sa.Column("max_participants", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("training_data", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("test_cid", sa.String(length=128), nullable=True),
        sa.Column("test_sha256", sa.String(length=64), nullable=True),
        sa.Column("global_model_cid", sa.String(length=128), nullable=True),
        sa.Column("global_model_sha256", sa.String(length=64), nullable=True),
        sa.Column("global_model_round", sa.Integer(), nullable=True),
        sa.Column("model_shapes", sa.JSON(), nullable=True),
        sa.Column("opt_state_cid", sa.String(length=128), nullable=True),
        sa.Column("reward_pool", parity.db.types.TokenAmount(length=80), nullable=True),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fl_sessions")),
    )
    with op.batch_alter_table("fl_sessions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fl_sessions_creator_created", ["creator_address", "created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_fl_sessions_status"), ["status"], unique=False)

    op.create_table(
        "fl_rounds",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("participants", sa.Integer(), nullable=False),
        sa.Column("required_updates", sa.Integer(), nullable=False),
        sa.Column("model_in_cid", sa.String(length=128), nullable=False),
        sa.Column("model_in_sha256", sa.String(length=64), nullable=False),
        sa.Column("model_out_cid", sa.String(length=128), nullable=True),
        sa.Column("model_out_sha256", sa.String(length=64), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("opened_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["fl_sessions.id"],
            name=op.f("fk_fl_rounds_session_id_fl_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fl_rounds")),
        sa.UniqueConstraint("session_id", "number", name=op.f("uq_fl_rounds_session_id_number")),
    )
    with op.batch_alter_table("fl_rounds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fl_rounds_deadline_at"), ["deadline_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_fl_rounds_status"), ["status"], unique=False)

    op.create_table(
        "fl_participants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("runner_id", sa.Uuid(), nullable=False),
        sa.Column("participant_index", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("partition_cid", sa.String(length=128), nullable=True),
        sa.Column("partition_sha256", sa.String(length=64), nullable=True),
        sa.Column("num_examples", sa.Integer(), nullable=True),
        sa.Column("label_counts", sa.JSON(), nullable=True),
        sa.Column("joined_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("left_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["runner_id"],
            ["runners.id"],
            name=op.f("fk_fl_participants_runner_id_runners"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["fl_sessions.id"],
            name=op.f("fk_fl_participants_session_id_fl_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fl_participants")),
    )
    with op.batch_alter_table("fl_participants", schema=None) as batch_op:
        batch_op.create_index("ix_fl_participants_runner", ["runner_id"], unique=False)
        batch_op.create_index(
            "ix_fl_participants_session_index", ["session_id", "participant_index"], unique=False
        )

    op.create_table(
        "fl_round_slots",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("round_id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("participant_id", sa.Uuid(), nullable=False),
        sa.Column("participant_index", sa.Integer(), nullable=False),
        sa.Column("runner_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("update_cid", sa.String(length=128), nullable=True),
        sa.Column("update_sha256", sa.String(length=64), nullable=True),
        sa.Column("num_examples", sa.Integer(), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("training_time_ms", sa.Integer(), nullable=True),
        sa.Column("update_norm", sa.Float(), nullable=True),
        sa.Column("drop_reason", sa.Text(), nullable=True),
        sa.Column("submitted_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["fl_participants.id"],
            name=op.f("fk_fl_round_slots_participant_id_fl_participants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["fl_rounds.id"],
            name=op.f("fk_fl_round_slots_round_id_fl_rounds"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["runner_id"],
            ["runners.id"],
            name=op.f("fk_fl_round_slots_runner_id_runners"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["fl_sessions.id"],
            name=op.f("fk_fl_round_slots_session_id_fl_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_fl_round_slots_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fl_round_slots")),
        sa.UniqueConstraint(
            "round_id",
            "participant_index",
            name=op.f("uq_fl_round_slots_round_id_participant_index"),
        ),
    )
    with op.batch_alter_table("fl_round_slots", schema=None) as batch_op:
        batch_op.create_index("ix_fl_round_slots_runner", ["runner_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_fl_round_slots_session_id"), ["session_id"], unique=False
        )
        batch_op.create_index("ix_fl_round_slots_task", ["task_id"], unique=True)

    with op.batch_alter_table("runners", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("fl_datasets", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("runners", schema=None) as batch_op:
        batch_op.drop_column("fl_datasets")

    with op.batch_alter_table("fl_round_slots", schema=None) as batch_op:
        batch_op.drop_index("ix_fl_round_slots_task")
        batch_op.drop_index(batch_op.f("ix_fl_round_slots_session_id"))
        batch_op.drop_index("ix_fl_round_slots_runner")

    op.drop_table("fl_round_slots")
    with op.batch_alter_table("fl_participants", schema=None) as batch_op:
        batch_op.drop_index("ix_fl_participants_session_index")
        batch_op.drop_index("ix_fl_participants_runner")

    op.drop_table("fl_participants")
    with op.batch_alter_table("fl_rounds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_rounds_status"))
        batch_op.drop_index(batch_op.f("ix_fl_rounds_deadline_at"))

    op.drop_table("fl_rounds")
    with op.batch_alter_table("fl_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_sessions_status"))
        batch_op.drop_index("ix_fl_sessions_creator_created")

    op.drop_table("fl_sessions")
