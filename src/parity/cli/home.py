"""The data directories a server or `migrate` creates and locks: a directory that cannot be
made or locked stops the command with a ConfigError naming the setting (PARITY_HOME,
STORAGE_PATH), not an OSError's traceback."""

from __future__ import annotations

from parity.config import Settings
from parity.db.lockfile import AlreadyRunning, ProcessLock
from parity.errors import ConfigError


def make_home(settings: Settings) -> None:
    """Create PARITY_HOME (the embedded database's directory); ConfigError naming the key when
    it cannot be (a parent that is a file, a read-only or pseudo file system)."""
    try:
        settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"PARITY_HOME: cannot create {settings.home}: {_why(exc)}") from None


def blocks_key(settings: Settings) -> str:
    return "STORAGE_PATH" if settings.storage_path is not None else "PARITY_HOME (its blocks/)"


def acquire_lock(lock: ProcessLock, key: str) -> ProcessLock:
    """Take ``lock``; a directory that cannot hold it is a ConfigError naming ``key``."""
    try:
        return lock.acquire()
    except AlreadyRunning:
        raise
    except OSError as exc:
        raise ConfigError(f"{key}: cannot use {lock.path.parent}: {_why(exc)}") from None


def _why(exc: OSError) -> str:
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return "a file is in the way (a directory is needed)"
    return exc.strerror or str(exc)
