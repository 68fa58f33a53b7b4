"""A per-client limit on requests that need no token, such as sign-in nonces: one token bucket
per client address, in process.

``POST /auth/nonce`` needs no token and stores one row per call, so a client that calls it in a
loop fills the database. A cap per wallet address would let anyone lock a wallet out of sign-in
(the address is not a secret); a cap per client address does not: each client spends only its
own budget. A bucket holds up to ``burst`` requests and refills at ``rate_per_minute``; a request
that finds it empty is refused with the seconds until the next one is allowed.

The key is the address the connection comes from (``client_key``): an IPv4 address, or the
/64 network of an IPv6 address (one host usually holds a whole /64, so counting its addresses
one by one would limit nothing). X-Forwarded-For is not read here.

Memory is bounded: a bucket that has refilled completely is the same as no bucket, so such
buckets are dropped (the least recently used first) whenever a new client arrives, and at
``max_clients`` buckets the least recently used one goes even if it is not full. A flood from
many addresses therefore never grows the map past ``max_clients``.

Pure and single-threaded: every method runs on the event loop without awaiting. Each replica
counts on its own.
"""

from __future__ import annotations

import math
import socket
from collections import OrderedDict
from dataclasses import dataclass

from parity.clock import Clock

DEFAULT_MAX_CLIENTS = 10_000

_V4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d


@dataclass(slots=True)
class _Bucket:
    tokens: float  # requests left, fractional while refilling
    updated: float  # monotonic seconds of the last request


def client_key(host: str | None) -> str:
    """The bucket key for a connection's peer address: an IPv4 address as is (an IPv4-mapped
    IPv6 address as its IPv4 address), an IPv6 address as its /64 network, anything else (a
    host name, a Unix socket path, no address at all) as written. C parsing only: this runs
    on every nonce request."""
    if not host:
        return ""
    if ":" not in host:
        return host
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except OSError:
        return host
    if packed[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


class ClientRateLimiter:
    """Token buckets by client key: ``acquire`` takes one request from a client's bucket."""

    def __init__(
        self,
        rate_per_minute: float,
        burst: int,
        clock: Clock,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if not (math.isfinite(rate_per_minute) and rate_per_minute >= 0):
            raise ValueError("rate_per_minute must be a finite number >= 0 (0: unlimited)")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.rate_per_minute = rate_per_minute
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._per_second = rate_per_minute / 60.0
        # An idle bucket is full again after this many seconds: then it is as good as absent.
        self._full_after = burst / self._per_second if self._per_second > 0 else math.inf
        # Least recently used first: every request moves its client's bucket to the end.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._per_second > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str) -> float:
        """Count one request of client ``key``: 0.0 when it is allowed, else the seconds until
        the client's next request would be (the refused request is not counted)."""
        if not self.enabled:
            return 0.0
        now = self._clock.monotonic()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            self._make_room(now)
            buckets[key] = _Bucket(self.burst - 1.0, now)
            return 0.0
        buckets.move_to_end(key)
        elapsed = max(now - bucket.updated, 0.0)
        tokens = min(float(self.burst), bucket.tokens + elapsed * self._per_second)
        bucket.updated = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            return 0.0
        bucket.tokens = tokens
        return (1.0 - tokens) / self._per_second

    def _make_room(self, now: float) -> None:
        """Before a new client's bucket: drop the buckets that have refilled completely (from
        the least recently used; the first one still refilling stops the sweep), then, at
        ``max_clients``, the least recently used one."""
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest.updated < self._full_after:
                break
            buckets.popitem(last=False)
        if len(buckets) >= self.max_clients:
            buckets.popitem(last=False)
