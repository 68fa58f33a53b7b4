"""How many client connections the server holds at once, and what happens past that.

Every connection costs an open file. Without a bound, a flood of connections (long-polls,
streams, slow uploads, or simply many clients) takes the last file descriptors, and then the
server's own work fails with it: database connections, SQLite's files, the content store's
packs. So the HTTP protocol (:mod:`parity.api.coalesce`) counts connections against two marks:

- past ``soft`` (``SERVER_MAX_CONNECTIONS``), a request is answered ``503 server_busy`` with
  ``Retry-After`` and its connection closed, and a new connection must send its request head
  within :data:`BUSY_HEAD_SECONDS` (an idle one would hold a descriptor for nothing);
- past ``hard`` (``soft`` plus an eighth, at least 16), a new connection is closed at once,
  unanswered: the descriptors between the marks are what the busy answers need.

With ``SERVER_MAX_CONNECTIONS=0`` (the default) the marks come from the process's open-file
limit, raised to its hard limit at start, less a reserve for the server's own files."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

BUSY_HEAD_SECONDS = 5.0
"""How long a connection opened past the soft mark may take to send its request head."""
RETRY_AFTER_SECONDS = 1
"""The ``Retry-After`` of a busy answer."""
OWN_FILES_RESERVE = 256
"""Descriptors kept for the server's own work on top of two per database pool connection."""
WARN_EVERY_SECONDS = 10.0


BUSY_SHARE = 0.9
"""``/api/status`` warns when this share of the soft mark is in use."""


@dataclass
class ConnectionLimits:
    """The two marks, and what the protocol counts against them in this process: connections
    open now and requests or connections refused since start (``/api/status`` shows both)."""

    soft: int
    hard: int
    open: int = 0
    refused_total: int = 0
    _warned_at: float = field(default=float("-inf"), repr=False)
    _refused: int = field(default=0, repr=False)

    @classmethod
    def of(cls, soft: int) -> ConnectionLimits:
        if soft < 1:
            raise ValueError("the connection limit must be at least 1")
        return cls(soft=soft, hard=soft + max(16, soft // 8))

    def refused(self) -> int | None:
        """Count one refusal; the number refused since the last report when one is due (at
        most every WARN_EVERY_SECONDS), else None."""
        self._refused += 1
        self.refused_total += 1
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY_SECONDS:
            return None
        self._warned_at, count, self._refused = now, self._refused, 0
        return count

    def describe(self) -> dict[str, int]:
        return {"open": self.open, "max": self.soft, "refused": self.refused_total}

    def warning(self) -> str | None:
        """A line for ``/api/status`` when the connections in use near the soft mark."""
        if self.open < self.soft * BUSY_SHARE:
            return None
        return (
            f"SERVER_MAX_CONNECTIONS: {self.open} of {self.soft} connections in use; past it "
            "requests are answered 503 server_busy (raise it with the open-file limit, or add "
            "replicas)"
        )


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit (what servers do at start:
    the soft default is often 1,024); the soft limit in force afterwards."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def limits_for(configured: int, open_files: int, database_pool_size: int) -> ConnectionLimits:
    """The marks for ``SERVER_MAX_CONNECTIONS`` (``configured``; 0 = from the open-file limit).
    Automatic: the hard mark uses what the reserve leaves, the soft mark eight ninths of it."""
    if configured > 0:
        return ConnectionLimits.of(configured)
    usable = open_files - OWN_FILES_RESERVE - 2 * database_pool_size
    return ConnectionLimits.of(max(32, usable * 8 // 9))


def busy_body(limits: ConnectionLimits) -> bytes:
    import json

    return json.dumps(
        {
            "error": {
                "code": "server_busy",
                "message": (
                    f"the server holds its maximum of {limits.soft} connections; retry after "
                    f"{RETRY_AFTER_SECONDS} s"
                ),
                "details": {"max_connections": limits.soft},
            }
        }
    ).encode()
