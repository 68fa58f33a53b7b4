"""llm: prompts (each owns one llm task row) and per-runner latency per model

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import parity.db.types

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "llm_prompts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("creator_address", sa.String(length=42), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("max_price", sa.JSON(), nullable=True),
        sa.Column("reserved_price", sa.JSON(), nullable=True),
        sa.Column("reserved", parity.db.types.TokenAmount(length=80), nullable=True),
        sa.Column("price", sa.JSON(), nullable=True),
        sa.Column("routed_runner_id", sa.Uuid(), nullable=True),
        sa.Column("routed_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("no_route_reason", sa.String(length=32), nullable=True),
        sa.Column("deadline_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("cost", parity.db.types.TokenAmount(length=80), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("metered_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_llm_prompts_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_prompts")),
        sa.UniqueConstraint("task_id", name=op.f("uq_llm_prompts_task_id")),
    )
    with op.batch_alter_table("llm_prompts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_llm_prompts_creator_created", ["creator_address", "created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_llm_prompts_metered_at"), ["metered_at"], unique=False)

    op.create_table(
        "llm_runner_stats",
        sa.Column("runner_id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("latency_ewma_ms", sa.Float(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("updated_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["runner_id"],
            ["runners.id"],
            name=op.f("fk_llm_runner_stats_runner_id_runners"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("runner_id", "model", name=op.f("pk_llm_runner_stats")),
    )


def downgrade() -> None:
    op.drop_table("llm_runner_stats")
    with op.batch_alter_table("llm_prompts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_llm_prompts_metered_at"))
        batch_op.drop_index("ix_llm_prompts_creator_created")
    op.drop_table("llm_prompts")
