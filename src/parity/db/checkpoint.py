"""WAL checkpoints of an embedded SQLite database, off the event loop.

SQLite checkpoints a WAL database automatically: the connection whose commit takes the log past
``wal_autocheckpoint`` pages (1,000 by default) copies the logged pages into the database file
and syncs both files before its commit returns. The write connection runs on the event loop's
thread (:mod:`parity.db.sqlite_driver`), so that copy and those two fsyncs stalled every request
of the server: 12 to 30 ms on an idle disk here, longer when the disk is busy with other
writes (an fsync waits for them; bench/sqlite_checkpoint.py). The write connection's automatic
checkpoint is off (``PRAGMA wal_autocheckpoint=0``); :class:`WalCheckpointer` runs a PASSIVE
checkpoint (it never waits for readers or the writer, which go on meanwhile) on a worker
thread, on a connection of its own, after every ``every`` write transactions. One runs at a
time; a failed one is logged and the next is tried ``every`` transactions later.

A PASSIVE checkpoint never shrinks the WAL file: SQLite rewrites it from the start once it was
wholly copied, but the file keeps the size of its largest burst (one where readers kept the log
from restarting: 46 MiB beside a 12 MiB database after ten minutes of mixed load) until the
server stops. The write connection sets ``journal_size_limit`` (``wal_size_limit``), so the
commit that restarts the log truncates the file back to that size.
"""

from __future__ import annotations

import asyncio
import sqlite3

from parity.logging import get_logger

log = get_logger("parity.db")

# Write transactions between two checkpoints. A small one logs a few pages (4 KiB each); 100
# keeps the log near SQLite's own threshold (1,000 pages) for the usual writes, and a checkpoint
# with little to copy costs about a millisecond on the worker thread.
CHECKPOINT_EVERY = 100
# Bytes the WAL file is cut back to when the log restarts (PRAGMA journal_size_limit): above
# what 100 usual write transactions log, so only a burst's file is cut.
WAL_SIZE_LIMIT = 16 * 1024 * 1024


class WalCheckpointer:
    def __init__(
        self,
        path: str,
        *,
        every: int = CHECKPOINT_EVERY,
        busy_ms: int = 5000,
        wal_size_limit: int = WAL_SIZE_LIMIT,
    ) -> None:
        self.path = path
        self.every = every
        self.wal_size_limit = wal_size_limit
        self.busy_s = busy_ms / 1000
        self.writes = 0
        self.checkpoints = 0
        self._running: asyncio.Future[None] | None = None

    def wrote(self) -> None:
        """A write transaction began (on the loop's thread): every ``every``-th one starts a
        checkpoint on a worker thread unless one is still running."""
        self.writes += 1
        if self.writes < self.every or self._running is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): SQLite's last close checkpoints
        self.writes = 0
        self._running = loop.run_in_executor(None, self._checkpoint)
        self._running.add_done_callback(self._done)

    def _checkpoint(self) -> None:
        conn = sqlite3.connect(self.path, timeout=self.busy_s, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            conn.close()

    def _done(self, fut: asyncio.Future[None]) -> None:
        self._running = None
        if fut.cancelled():
            return
        error = fut.exception()
        if error is not None:
            log.warning("wal_checkpoint_failed", error=str(error), database=self.path)
        else:
            self.checkpoints += 1

    async def drain(self) -> None:
        """Wait for a running checkpoint (before the engines close)."""
        running = self._running
        if running is not None:
            await asyncio.gather(running, return_exceptions=True)
