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
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

MIGRATION_KEY = 0x7061_7269  # "pari"
SCRIPTS = Path(__file__).resolve().parent.parent / "migrations"


class SchemaTooNew(Exception):
    """The database was migrated by newer code than this."""


class DatabaseUnavailable(Exception):
    """No connection could be opened: the server is unreachable, refuses the login (unknown
    role or database, wrong password) or the SQLite file cannot be opened. ``url`` is the
    database without its password or driver, ``reason`` the driver's own words."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot connect to the database {url}: {reason}")
        self.url = url
        self.reason = reason


class DatabaseUrlInvalid(ValueError):
    """The database URL cannot be read (a port that is not a number, an unknown driver)."""


class RevisionRefused(ValueError):
    """A downgrade target this code does not know, or one that is not below the database's
    revision; the message names the target and the revisions there are."""


def display_url(url: str) -> str:
    """``url`` for a message: its backend, user, host, port and database, never the password
    (nor the query, which may carry one)."""
    try:
        parsed = make_url(url)
    except (ValueError, TypeError, ArgumentError):
        return url.partition("://")[0].partition("+")[0] + "://…"
    shown = URL.create(
        parsed.get_backend_name(),
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
    )
    return shown.render_as_string(hide_password=False)


def _unavailable(url: str, exc: DBAPIError | OSError) -> DatabaseUnavailable:
    reason = str(exc.orig if isinstance(exc, DBAPIError) else exc) or type(exc).__name__
    try:
        password = make_url(url).password
    except (ValueError, TypeError, ArgumentError):
        password = None
    if password:  # no driver is known to quote it; never show it if one did
        reason = reason.replace(str(password), "***")
    return DatabaseUnavailable(display_url(url), reason.strip())


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    return set(revision_order())


def revision_order() -> list[str]:
    """The revisions this code knows, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


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


def _sqlite_folder_missing(url: str) -> Path | None:
    """The folder an SQLite database file would be in, when it does not exist (SQLite then
    cannot create the file; said before a connection is tried, whose failure path races
    aiosqlite's worker thread against the loop's end)."""
    try:
        parsed = make_url(url)
    except (ValueError, TypeError, ArgumentError):
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    folder = Path(database).expanduser().parent
    return None if folder.is_dir() else folder


async def _with_connection(url: str, fn: Any, *, lock: bool) -> Any:
    if (folder := _sqlite_folder_missing(url)) is not None:
        raise DatabaseUnavailable(
            display_url(url), f"unable to open database file: no folder {folder}"
        )
    try:
        engine = create_async_engine(url, poolclass=NullPool)
    except (ArgumentError, ValueError, ImportError) as exc:
        raise DatabaseUrlInvalid(f"cannot read the database URL {display_url(url)}: {exc}") from exc
    try:
        try:
            conn = await engine.connect()
        except (DBAPIError, OSError) as exc:
            raise _unavailable(url, exc) from exc
        try:
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
            await conn.close()
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


def _downgrade_refused(revision: str, current: str | None, exc: CommandError) -> RevisionRefused:
    """Alembic's refusal of a downgrade target, said in terms of the revisions there are."""
    order = revision_order()
    known = ", ".join(["base", *order])
    target = order[-1] if revision in ("head", "heads") else revision
    if target not in order and "Can't locate revision" in str(exc):
        return RevisionRefused(f"unknown revision {revision!r} (known: {known})")
    if target in order and (current is None or order.index(target) > order.index(current)):
        return RevisionRefused(
            f"revision {revision} is not below the database's {current or 'base'}: a downgrade "
            "goes to an older revision (`parity-server migrate` upgrades)"
        )
    return RevisionRefused(
        f"cannot downgrade to {revision!r} from {current or 'base'}: {exc} (known: {known})"
    )


async def downgrade(url: str, revision: str) -> SchemaStatus:
    """Bring the schema down to ``revision`` (a revision id, ``base``, or a relative step such
    as ``-1``) under the migration lock; refuse a newer database and a target that is unknown
    or not below the database's revision (:class:`RevisionRefused`)."""

    if not revision.strip():
        known = ", ".join(["base", *revision_order()])
        raise RevisionRefused(f"no revision given (known: {known})")

    def run(conn: Connection) -> str | None:
        cur = _current(conn)
        if cur is not None and cur not in known_revisions():
            raise SchemaTooNew(
                f"database schema revision {cur} is newer than this server "
                f"(head {head_revision()}); downgrade it with the parity-server that migrated it"
            )
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        try:
            command.downgrade(cfg, revision)
        except CommandError as exc:
            raise _downgrade_refused(revision, cur, exc) from None
        return _current(conn)

    current = await _with_connection(url, run, lock=True)
    return SchemaStatus(current=current, head=head_revision())
