"""Process locks on directories a server must not share: the embedded mode's data directory
(one server per ``PARITY_HOME``, ARCHITECTURE §2.1) and a local blockstore (its pins live in
one database, so a server of another database collecting garbage there would delete content
it does not know is pinned)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

EMBEDDED_ADVICE = (
    "embedded mode allows one server process. Stop it, set PARITY_HOME to another "
    "directory, or use PostgreSQL (DATABASE_URL) to run several."
)


class AlreadyRunning(Exception):
    pass


class ProcessLock:
    """An exclusive ``flock`` held for the process lifetime; the kernel drops it when the
    process dies, so a crash never leaves a stale lock. The file holds the owner's pid and,
    after it, what the owner is (``holder``), for the refusal message of the next one."""

    def __init__(
        self,
        path: Path,
        *,
        what: str = "",
        holder: str = "",
        advice: str = EMBEDDED_ADVICE,
    ) -> None:
        self.path = path
        self.what = what or str(path.parent)
        self.holder = holder
        self.advice = advice
        self._fh: IO[str] | None = None

    def acquire(self) -> ProcessLock:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid, _, holder = fh.read().strip().partition(" ")
            fh.close()
            owner = f"pid {pid or 'unknown'}" + (f", {holder}" if holder else "")
            raise AlreadyRunning(
                f"another parity-server ({owner}) is already using {self.what}; {self.advice}"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {self.holder}".rstrip())
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
