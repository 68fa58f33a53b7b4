"""Alembic environment. Always driven programmatically by parity.db.migrate, which passes an
open connection (holding the migration lock on PostgreSQL)."""

from __future__ import annotations

from alembic import context

from parity.db.registry import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `parity-server migrate`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
