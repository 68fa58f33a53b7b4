"""Which content store the settings select, and the lock a server holds on a local one."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from parity.config import Settings
from parity.db.lockfile import ProcessLock
from parity.storage.kubo import KuboContentStore
from parity.storage.local import LocalContentStore
from parity.storage.ports import ContentStore

BLOCKSTORE_LOCK = ".server.lock"


def open_content_store(settings: Settings) -> ContentStore:
    """kubo's HTTP RPC when FILECOIN_IPFS_ENDPOINT is set, else the local blockstore."""
    if settings.filecoin_ipfs_endpoint:
        return KuboContentStore(
            settings.filecoin_ipfs_endpoint,
            timeout_seconds=settings.storage_kubo_timeout_seconds,
            with_cidv0=settings.storage_cidv0_aliases,
        )
    return LocalContentStore(settings.blocks_path, with_cidv0=settings.storage_cidv0_aliases)


def database_label(settings: Settings) -> str:
    """Which database a server uses, without credentials: for lock files and messages."""
    if settings.embedded:
        return f"embedded mode, {settings.resolved_database_url.partition(':///')[2]}"
    # SQLAlchemy's reading of the URL, as the engine's: a password may hold an unquoted "/".
    try:
        url = make_url(settings.resolved_database_url)
    except (ArgumentError, ValueError):
        return "PostgreSQL mode"
    return f"PostgreSQL mode, {url.host}:{url.port or 5432}/{url.database or ''}"


def blockstore_lock(settings: Settings) -> ProcessLock | None:
    """The lock a server holds on its local blockstore (None with kubo): one server per local
    blockstore. Its pins live in that server's database, so a server of another database (an
    embedded one beside a PostgreSQL one, say) sharing it would collect garbage the other
    still pins; replicas of one database share a kubo node instead (README: required with
    more than one replica). ``storage gc`` takes no such lock: it runs beside its server."""
    if settings.filecoin_ipfs_endpoint:
        return None
    return ProcessLock(
        settings.blocks_path / BLOCKSTORE_LOCK,
        what=f"the blockstore {settings.blocks_path}",
        holder=database_label(settings),
        advice=(
            "a local blockstore belongs to one server. Stop that server, set STORAGE_PATH to "
            "another directory for this one, or set FILECOIN_IPFS_ENDPOINT to a kubo node that "
            "servers can share."
        ),
    )
