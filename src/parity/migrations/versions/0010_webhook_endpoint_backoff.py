"""webhook endpoint back-off: when an endpoint began failing, when it may be tried next, and
when its breaker disabled it

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import parity.db.types

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        for name in ("disabled_at", "failing_since", "next_attempt_at"):
            batch_op.add_column(
                sa.Column(name, parity.db.types.UTCDateTime(timezone=True), nullable=True)
            )
    # An endpoint disabled before this revision was disabled at its last change.
    op.execute(
        "UPDATE webhook_endpoints SET disabled_at = updated_at "
        "WHERE enabled = false AND disabled_at IS NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("failing_since")
        batch_op.drop_column("disabled_at")
