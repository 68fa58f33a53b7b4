"""The per-client token bucket of sign-in nonce requests (parity.auth.ratelimit), on an injected
clock."""

from __future__ import annotations

import math

import pytest

from parity.auth.ratelimit import ClientRateLimiter, client_key
from parity.auth.service import limit_nonce_requests
from parity.clock import FrozenClock
from parity.config import load_settings
from parity.errors import ConfigError, RateLimited


def test_a_client_gets_its_burst_then_waits_for_the_refill():
    clock = FrozenClock()
    limiter = ClientRateLimiter(60, 3, clock)  # one a second, three at once
    assert [limiter.acquire("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("10.0.0.1") == pytest.approx(1.0)
    clock.advance(0.25)
    assert limiter.acquire("10.0.0.1") == pytest.approx(0.75)  # a refusal costs nothing
    clock.advance(0.75)
    assert limiter.acquire("10.0.0.1") == 0.0
    assert limiter.acquire("10.0.0.1") == pytest.approx(1.0)
    # Idle for long: full again, never more than the burst.
    clock.advance(3600)
    assert [limiter.acquire("10.0.0.1") for _ in range(4)][-2:] == [0.0, pytest.approx(1.0)]


def test_clients_are_counted_apart():
    clock = FrozenClock()
    limiter = ClientRateLimiter(6, 2, clock)  # one every ten seconds
    assert limiter.acquire("a") == limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(10.0)
    assert limiter.acquire("b") == limiter.acquire("b") == 0.0
    assert limiter.acquire("b") > 0


def test_zero_means_unlimited_and_keeps_no_state():
    limiter = ClientRateLimiter(0, 1, FrozenClock())
    assert not limiter.enabled
    assert all(limiter.acquire("a") == 0.0 for _ in range(1000))
    assert len(limiter) == 0


@pytest.mark.parametrize(
    ("rate", "burst", "max_clients"),
    [(-1, 1, 1), (math.inf, 1, 1), (math.nan, 1, 1), (60, 0, 1), (60, 1, 0)],
)
def test_nonsense_limits_are_refused(rate: float, burst: int, max_clients: int):
    with pytest.raises(ValueError):
        ClientRateLimiter(rate, burst, FrozenClock(), max_clients=max_clients)


def test_buckets_that_refilled_are_forgotten_when_new_clients_come():
    clock = FrozenClock()
    limiter = ClientRateLimiter(60, 5, clock)  # full again 5 s after the last request
    for i in range(100):
        limiter.acquire(f"10.0.0.{i}")
    assert len(limiter) == 100
    clock.advance(5)
    limiter.acquire("10.0.1.1")
    assert len(limiter) == 1


def test_a_flood_from_many_addresses_stays_within_max_clients():
    clock = FrozenClock()
    limiter = ClientRateLimiter(1, 1, clock, max_clients=50)  # nothing refills in this test
    for i in range(10_000):
        limiter.acquire(f"client-{i}")
        assert len(limiter) <= 50
    # The most recent clients are still counted; the least recently used made room.
    assert limiter.acquire("client-9999") > 0
    assert limiter.acquire("client-0") == 0.0


def test_a_refused_client_stays_counted_while_others_come_and_go():
    clock = FrozenClock()
    limiter = ClientRateLimiter(1, 1, clock, max_clients=3)
    limiter.acquire("flooder")
    for i in range(10):
        assert limiter.acquire("flooder") > 0  # refused, and now the most recently used
        limiter.acquire(f"other-{i}")
        assert len(limiter) <= 3


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("2001:DB8:1:3:0:0:0:1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        ("not:an:address", "not:an:address"),
        ("testclient", "testclient"),
        (None, ""),
        ("", ""),
    ],
)
def test_client_key_is_the_address_or_the_ipv6_slash_64(host: str | None, key: str):
    assert client_key(host) == key


def test_a_refusal_is_rate_limited_naming_the_limit_with_whole_seconds_to_wait():
    clock = FrozenClock()
    limiter = ClientRateLimiter(2.5, 2, clock)  # one every 24 s
    limit_nonce_requests(limiter, "198.51.100.1")
    limit_nonce_requests(limiter, "198.51.100.1")
    clock.advance(0.5)
    with pytest.raises(RateLimited) as caught:
        limit_nonce_requests(limiter, "198.51.100.1")
    err = caught.value
    assert err.code == "rate_limited"
    assert err.retry_after == 24  # 23.5 s rounded up to whole seconds
    assert "2.5 per minute" in err.message and "bursts of up to 2" in err.message
    assert "AUTH_NONCE_RATE_PER_MINUTE" in err.message
    assert err.details == {"limit_per_minute": 2.5, "burst": 2, "retry_after_seconds": 24}
    # Another address is not affected, and IPv6 neighbours in one /64 share a bucket.
    limit_nonce_requests(limiter, "198.51.100.2")
    limit_nonce_requests(limiter, "2001:db8::1")
    limit_nonce_requests(limiter, "2001:db8::2")
    with pytest.raises(RateLimited):
        limit_nonce_requests(limiter, "2001:db8::3")


def test_retry_after_is_at_least_one_second():
    clock = FrozenClock()
    limiter = ClientRateLimiter(600_000, 1, clock)  # a token every 0.1 ms
    limit_nonce_requests(limiter, "a")
    with pytest.raises(RateLimited) as caught:
        limit_nonce_requests(limiter, "a")
    assert caught.value.retry_after == 1


def test_the_settings_default_to_60_a_minute_in_bursts_of_60():
    s = load_settings({}, env_file=None)
    assert (s.auth_nonce_rate_per_minute, s.auth_nonce_burst) == (60, 60)
    s = load_settings({"AUTH_NONCE_RATE_PER_MINUTE": "0.5", "AUTH_NONCE_BURST": "2"}, env_file=None)
    assert (s.auth_nonce_rate_per_minute, s.auth_nonce_burst) == (0.5, 2)
    assert load_settings({"AUTH_NONCE_RATE_PER_MINUTE": "0"}, env_file=None)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("AUTH_NONCE_RATE_PER_MINUTE", "-1"),
        ("AUTH_NONCE_RATE_PER_MINUTE", "inf"),
        ("AUTH_NONCE_RATE_PER_MINUTE", "nan"),
        ("AUTH_NONCE_RATE_PER_MINUTE", "lots"),
        ("AUTH_NONCE_BURST", "0"),
        ("AUTH_NONCE_BURST", "1.5"),
    ],
)
def test_a_bad_limit_stops_start_up_naming_the_key(key: str, value: str):
    with pytest.raises(ConfigError, match=key):
        load_settings({key: value}, env_file=None)
