"""runners and the task queue

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 20:39:27.855348
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import parity.db.types

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runner_pushes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("runner_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("abandoned_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runner_pushes")),
    )
    with op.batch_alter_table("runner_pushes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_runner_pushes_due", ["delivered_at", "next_attempt_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_runner_pushes_runner_id"), ["runner_id"], unique=False)

    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("environment", sa.JSON(), nullable=True),
        sa.Column("req_cpu_cores", sa.Float(), nullable=False),
        sa.Column("req_memory_mb", sa.Integer(), nullable=False),
        sa.Column("req_gpus", sa.Integer(), nullable=False),
        sa.Column("req_docker", sa.Boolean(), nullable=False),
        sa.Column("required_labels", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("creator_address", sa.String(length=42), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("releases", sa.Integer(), nullable=False),
        sa.Column("available_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("target_runner_id", sa.Uuid(), nullable=True),
        sa.Column("offer_expires_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("runner_id", sa.Uuid(), nullable=True),
        sa.Column("claim_token_hash", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("started_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("log_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_tasks_creator_created", ["creator_address", "created_at"], unique=False
        )
        batch_op.create_index("ix_tasks_lease", ["status", "lease_expires_at"], unique=False)
        batch_op.create_index(
            "ix_tasks_queue", ["status", "priority", "available_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_tasks_runner_id"), ["runner_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_tasks_target_runner_id"), ["target_runner_id"], unique=False
        )

    op.create_table(
        "runners",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("owner_address", sa.String(length=42), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_secret", sa.String(length=80), nullable=True),
        sa.Column("cpu_cores", sa.Float(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("docker", sa.Boolean(), nullable=False),
        sa.Column("fl", sa.Boolean(), nullable=False),
        sa.Column("max_concurrent_tasks", sa.Integer(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("runner_version", sa.String(length=40), nullable=True),
        sa.Column("cpu_usage", sa.Float(), nullable=True),
        sa.Column("memory_usage", sa.Float(), nullable=True),
        sa.Column("last_heartbeat", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("drain_requested", sa.Boolean(), nullable=False),
        sa.Column("banned_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_address"], ["accounts.address"], name=op.f("fk_runners_owner_address_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runners")),
        sa.UniqueConstraint("device_id", name=op.f("uq_runners_device_id")),
    )
    with op.batch_alter_table("runners", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runners_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_runners_last_heartbeat"), ["last_heartbeat"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_runners_owner_address"), ["owner_address"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_runners_status"), ["status"], unique=False)

    op.create_table(
        "task_attempts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("runner_id", sa.Uuid(), nullable=False),
        sa.Column("claim_token_hash", sa.String(length=64), nullable=False),
        sa.Column("claimed_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", parity.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_attempts_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_attempts")),
        sa.UniqueConstraint("task_id", "attempt", name=op.f("uq_task_attempts_task_id_attempt")),
    )
    with op.batch_alter_table("task_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_task_attempts_claim_token_hash"), ["claim_token_hash"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_task_attempts_runner_id"), ["runner_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_task_attempts_task_id"), ["task_id"], unique=False)

    op.create_table(
        "task_exclusions",
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("runner_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_exclusions_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "runner_id", name=op.f("pk_task_exclusions")),
    )
    op.create_table(
        "task_logs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_task_logs_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_logs")),
        sa.UniqueConstraint(
            "task_id", "attempt", "seq", name=op.f("uq_task_logs_task_id_attempt_seq")
        ),
    )
    op.create_table(
        "task_results",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("runner_id", sa.Uuid(), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("output_cid", sa.String(length=120), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result_hash", sa.String(length=128), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.Column("execution_seconds", sa.Float(), nullable=True),
        sa.Column("created_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_results_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_results")),
        sa.UniqueConstraint("task_id", name=op.f("uq_task_results_task_id")),
    )
    op.create_table(
        "runner_models",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("runner_id", sa.Uuid(), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("is_loaded", sa.Boolean(), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("updated_at", parity.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["runner_id"],
            ["runners.id"],
            name=op.f("fk_runner_models_runner_id_runners"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runner_models")),
        sa.UniqueConstraint(
            "runner_id", "model_name", name=op.f("uq_runner_models_runner_id_model_name")
        ),
    )
    with op.batch_alter_table("runner_models", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_runner_models_model_name"), ["model_name"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_runner_models_runner_id"), ["runner_id"], unique=False)
    op.create_index(
        "ix_tasks_pending_order",
        "tasks",
        [sa.text("priority DESC"), "available_at", "id"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_pending_order", table_name="tasks")
    with op.batch_alter_table("runner_models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runner_models_runner_id"))
        batch_op.drop_index(batch_op.f("ix_runner_models_model_name"))

    op.drop_table("runner_models")
    op.drop_table("task_results")
    op.drop_table("task_logs")
    op.drop_table("task_exclusions")
    with op.batch_alter_table("task_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_attempts_task_id"))
        batch_op.drop_index(batch_op.f("ix_task_attempts_runner_id"))
        batch_op.drop_index(batch_op.f("ix_task_attempts_claim_token_hash"))

    op.drop_table("task_attempts")
    with op.batch_alter_table("runners", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runners_status"))
        batch_op.drop_index(batch_op.f("ix_runners_owner_address"))
        batch_op.drop_index(batch_op.f("ix_runners_last_heartbeat"))
        batch_op.drop_index(batch_op.f("ix_runners_created_at"))

    op.drop_table("runners")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_target_runner_id"))
        batch_op.drop_index(batch_op.f("ix_tasks_runner_id"))
        batch_op.drop_index("ix_tasks_queue")
        batch_op.drop_index("ix_tasks_lease")
        batch_op.drop_index("ix_tasks_creator_created")

    op.drop_table("tasks")
    with op.batch_alter_table("runner_pushes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runner_pushes_runner_id"))
        batch_op.drop_index("ix_runner_pushes_due")

    op.drop_table("runner_pushes")
