"""An in-process cache of authenticated principals, keyed by the token's SHA-256.

Every authenticated request resolves its bearer token; on a runner's claim/start/complete path
that lookup is a measurable share of server work, and the answer rarely changes. A principal is
remembered for ``ttl_seconds`` (AUTH_CACHE_SECONDS), never past the token's own ``expires_at``.
Only successful authentications are stored: an unknown, revoked or expired token always reaches
the database and gets the same 401.

Revocation clears the whole cache (revocations are rare). A lookup that read the token row
before a revocation committed must not store its stale answer after the clear, so every clear
bumps ``generation`` and ``put`` refuses a result whose lookup began under an older one. A clear
is also forwarded to the other replicas through ``forward`` (set by the wake-up relay).

Pure and single-threaded: every method runs on the event loop without awaiting.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from parity.auth.schemas import Principal
from parity.clock import Clock

DEFAULT_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    fresh_until: float  # monotonic seconds: stored + ttl
    expires_at: datetime | None  # the token's own expiry (wall clock, UTC)


class TokenCache:
    def __init__(
        self, ttl_seconds: float, clock: Clock, *, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        # Insertion order is oldest first and, with one ttl on one monotonic clock, also the
        # order of ``fresh_until``: eviction pops from the front.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.generation = 0
        # Set by the relay: sends "clear your token cache" to the other replicas.
        self.forward: Callable[[dict[str, Any]], None] | None = None

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token_hash: str, now: datetime) -> Principal | None:
        """The remembered principal, or None when absent, past its ttl or past the token's
        expiry (``now`` is the request's wall-clock time, as the database check uses)."""
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if self._clock.monotonic() >= entry.fresh_until or (
            entry.expires_at is not None and entry.expires_at <= now
        ):
            self._entries.pop(token_hash, None)
            return None
        return entry.principal

    def put(
        self,
        token_hash: str,
        principal: Principal,
        expires_at: datetime | None,
        generation: int,
        now: datetime,
    ) -> bool:
        """Remember a successful authentication whose lookup began at ``generation``; refused
        (False) when the cache is disabled, a clear happened since, or the token has expired."""
        if not self.enabled or generation != self.generation:
            return False
        if expires_at is not None and expires_at <= now:
            return False
        mono = self._clock.monotonic()
        self._entries.pop(token_hash, None)  # re-inserted as the newest
        if len(self._entries) >= self.max_entries:
            self._evict(mono)
        self._entries[token_hash] = _Entry(principal, mono + self.ttl_seconds, expires_at)
        return True

    def clear(self, *, forward: bool = True) -> None:
        """Forget every principal and invalidate lookups in flight; with ``forward``, ask the
        other replicas to do the same."""
        self.generation += 1
        self._entries.clear()
        if forward and self.forward is not None:
            self.forward({"k": "tokens"})

    def _evict(self, mono: float) -> None:
        """Make room for one entry: drop the stale entries at the front, else the oldest."""
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            if entries[oldest].fresh_until > mono:
                break
            del entries[oldest]
        if len(entries) >= self.max_entries:
            entries.popitem(last=False)
