"""Schema migrations (Alembic), run under ``pg_advisory_lock(MIGRATION_KEY)`` on a dedicated
connection so several replicas can start at once. A database whose revision this code does not
know (it is newer) is refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

MIGRATION_KEY = 0x7061_7269  # "pari"
SCRIPTS = Path(__file__).resolve().parent.parent / "migrations"


class SchemaTooNew(Exception):
    """The database was migrated by newer code than this."""


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def too_new(self) -> bool:
        return self.current is not None and self.current not in known_revisions()


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def _with_connection(url: str, fn: Any, *, lock: bool) -> Any:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            pg = conn.dialect.name == "postgresql"
            if pg and lock:
                await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_KEY})
                await conn.commit()
            try:
                result = await conn.run_sync(fn)
                await conn.commit()
            finally:
                if pg and lock:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_KEY})
                    await conn.commit()
            return result
    finally:
        await engine.dispose()


async def schema_status(url: str) -> SchemaStatus:
    """The database's revision and the code's head. Reads only: an SQLite file that does not
    exist is reported as having no schema, not created."""
    if _missing_sqlite_file(url):
        return SchemaStatus(current=None, head=head_revision())
    current = await _with_connection(url, _current, lock=False)
    return SchemaStatus(current=current, head=head_revision())


def _missing_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return False
    return not Path(database).expanduser().exists()


async def upgrade(url: str, revision: str = "head") -> SchemaStatus:
    """Bring the schema to ``revision`` under the migration lock; refuse a newer database."""

    def run(conn: Connection) -> str | None:
        cur = _current(conn)
        if cur is not None and cur not in known_revisions():
            raise SchemaTooNew(
                f"database schema revision {cur} is newer than this server "
                f"(head {head_revision()}); upgrade parity-server"
            )
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        return _current(conn)

    current = await _with_connection(url, run, lock=True)
    return SchemaStatus(current=current, head=head_revision())


async def downgrade(url: str, revision: str) -> SchemaStatus:
    def run(conn: Connection) -> str | None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
        return _current(conn)

    current = await _with_connection(url, run, lock=True)
    return SchemaStatus(current=current, head=head_revision())
