"""The in-process cache of authenticated principals: ttl on an injected clock, the token's own
expiry, a size bound, and the generation rule that keeps a lookup racing a revocation out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from parity.auth.cache import TokenCache
from parity.auth.schemas import Principal
from parity.clock import FrozenClock


def _principal(address: str = "0x" + "ab" * 20) -> Principal:
    return Principal(address=address, kind="session", token_id=uuid.uuid4(), is_admin=False)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 1, 1, tzinfo=UTC))


def _store(cache: TokenCache, clock: FrozenClock, key: str, **kw: Any) -> Principal:
    p = _principal()
    assert cache.put(key, p, kw.get("expires_at"), cache.generation, clock.now())
    return p


def test_a_principal_is_remembered_until_its_ttl_passes(clock: FrozenClock):
    cache = TokenCache(5, clock)
    p = _store(cache, clock, "h1")
    assert cache.get("h1", clock.now()) is p
    clock.advance(4.9)
    assert cache.get("h1", clock.now()) is p
    clock.advance(0.1)
    assert cache.get("h1", clock.now()) is None
    assert len(cache) == 0  # a stale entry is dropped when found


def test_an_entry_never_outlives_the_tokens_own_expiry(clock: FrozenClock):
    cache = TokenCache(60, clock)
    p = _store(cache, clock, "h1", expires_at=clock.now() + timedelta(seconds=2))
    clock.advance(1.9)
    assert cache.get("h1", clock.now()) is p
    clock.advance(0.1)
    assert cache.get("h1", clock.now()) is None


def test_an_already_expired_token_is_not_stored(clock: FrozenClock):
    cache = TokenCache(60, clock)
    assert not cache.put("h1", _principal(), clock.now(), cache.generation, clock.now())
    assert cache.get("h1", clock.now()) is None


def test_size_is_bounded_and_the_oldest_goes_first(clock: FrozenClock):
    cache = TokenCache(60, clock, max_entries=3)
    for i in range(3):
        _store(cache, clock, f"h{i}")
        clock.advance(1)
    _store(cache, clock, "h3")
    assert len(cache) == 3
    assert cache.get("h0", clock.now()) is None
    assert all(cache.get(f"h{i}", clock.now()) is not None for i in (1, 2, 3))


def test_when_full_stale_entries_are_dropped_before_fresh_ones(clock: FrozenClock):
    cache = TokenCache(10, clock, max_entries=3)
    _store(cache, clock, "old1")
    _store(cache, clock, "old2")
    clock.advance(9)
    _store(cache, clock, "fresh")
    clock.advance(2)  # old1 and old2 are past their ttl, fresh is not
    _store(cache, clock, "new")
    assert len(cache) == 2
    assert cache.get("fresh", clock.now()) is not None
    assert cache.get("new", clock.now()) is not None


def test_storing_a_key_again_replaces_it_without_evicting_another(clock: FrozenClock):
    cache = TokenCache(60, clock, max_entries=2)
    _store(cache, clock, "a")
    _store(cache, clock, "b")
    p = _store(cache, clock, "a")
    assert len(cache) == 2
    assert cache.get("a", clock.now()) is p
    assert cache.get("b", clock.now()) is not None


def test_clear_forgets_everything(clock: FrozenClock):
    cache = TokenCache(60, clock)
    _store(cache, clock, "a")
    _store(cache, clock, "b")
    cache.clear()
    assert len(cache) == 0
    assert cache.get("a", clock.now()) is None


def test_a_lookup_that_began_before_a_clear_is_not_stored(clock: FrozenClock):
    cache = TokenCache(60, clock)
    began = cache.generation  # the lookup reads the token row ...
    cache.clear()  # ... a revocation commits meanwhile ...
    assert not cache.put("h1", _principal(), None, began, clock.now())  # ... its answer is stale
    assert cache.get("h1", clock.now()) is None
    # A lookup that began after the clear is stored.
    assert cache.put("h1", _principal(), None, cache.generation, clock.now())


def test_zero_seconds_disables_the_cache(clock: FrozenClock):
    cache = TokenCache(0, clock)
    assert not cache.enabled
    assert not cache.put("h1", _principal(), None, cache.generation, clock.now())
    assert cache.get("h1", clock.now()) is None


def test_a_clear_is_forwarded_unless_it_came_from_another_replica(clock: FrozenClock):
    cache = TokenCache(60, clock)
    sent: list[dict[str, Any]] = []
    cache.forward = sent.append
    cache.clear()
    cache.clear(forward=False)
    assert sent == [{"k": "tokens"}]
    assert cache.generation == 2
