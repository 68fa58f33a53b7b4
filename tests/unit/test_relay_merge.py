"""The wake-up relay merges what queued up while it was sending into one notification, and
applies another replica's token-cache clear."""

from __future__ import annotations

import json
import uuid
from typing import Any

from parity.auth.cache import TokenCache
from parity.auth.schemas import Principal
from parity.clock import FrozenClock
from parity.events.hub import EventHub
from parity.relay import WakeRelay, encode, merge
from parity.tasks.wakeups import WakeHub


def _principal() -> Principal:
    return Principal(
        address="0x" + "ab" * 20, kind="session", token_id=uuid.uuid4(), is_admin=False
    )


def test_queued_wake_ups_merge_into_one_notification():
    runner = str(uuid.uuid4())
    merged = merge(
        [
            {"k": "runner", "r": runner},
            {"k": "any", "n": 2},
            {"k": "events", "a": ["0xb"], "d": False},
            {"k": "any", "n": 1},
            {"k": "events", "a": ["0xa", "0xb"]},
            {"k": "pushes"},
            {"k": "runner", "r": runner},
        ],
        "me",
    )
    assert merged == {"o": "me", "r": [runner], "n": 3, "p": True, "a": ["0xa", "0xb"], "d": True}
    quiet = merge([{"k": "events", "a": ["0xa"], "d": False}], "me")
    assert quiet == {"o": "me", "a": ["0xa"]}  # no deliveries queued: delivery loops stay idle
    assert merge([{"k": "events", "a": ["0xa"]}, {"k": "events", "a": None}], "me")["a"] is None


def test_a_token_cache_clear_merges_into_one_flag():
    merged = merge([{"k": "tokens"}, {"k": "pushes"}, {"k": "tokens"}], "me")
    assert merged == {"o": "me", "p": True, "t": 1}
    assert "t" not in merge([{"k": "pushes"}], "me")


def test_an_oversized_batch_wakes_everything_and_keeps_the_token_cache_clear():
    batch = [{"k": "runner", "r": str(uuid.uuid4())} for _ in range(400)] + [{"k": "tokens"}]
    message = json.loads(encode(batch, "me"))
    assert message == {"o": "me", "n": 1 << 20, "p": True, "a": None, "t": 1}
    assert "t" not in json.loads(encode(batch[:-1], "me"))


def test_a_token_cache_clear_from_another_replica_is_applied_without_forwarding():
    clock = FrozenClock()
    tokens = TokenCache(60, clock)
    sent: list[dict[str, Any]] = []
    relay = WakeRelay("postgresql://unused", WakeHub(), EventHub(), tokens=tokens)
    relay.send = sent.append  # type: ignore[method-assign]
    relay.attach()
    tokens.put("h", _principal(), None, tokens.generation, clock.now())
    relay.apply({"o": "other", "t": 1})
    assert len(tokens) == 0 and tokens.generation == 1
    assert sent == []  # applied here only: not sent back
    relay.apply({"o": "other", "p": True})  # a plain wake-up leaves the cache alone
    assert tokens.generation == 1
    tokens.clear()  # a clear made here is sent
    assert sent == [{"k": "tokens"}]
    bare = WakeRelay("postgresql://unused", WakeHub(), EventHub())
    bare.apply({"o": "other", "t": 1})  # a relay without a cache ignores the flag


def test_an_announcement_merges_into_the_notification_and_survives_an_oversized_batch():
    assert merge([{"k": "hello"}, {"k": "any", "n": 1}], "me") == {"o": "me", "n": 1, "h": 1}
    batch = [{"k": "runner", "r": str(uuid.uuid4())} for _ in range(400)] + [{"k": "hello"}]
    assert json.loads(encode(batch, "me"))["h"] == 1


def test_an_announcement_carries_its_settings_and_the_peers_are_remembered_until_they_leave():
    setup = {"streams": "ab12"}
    merged = merge([{"k": "hello", "f": setup}, {"k": "any", "n": 1}], "me")
    assert merged == {"o": "me", "n": 1, "h": 1, "f": setup}
    batch = [{"k": "runner", "r": str(uuid.uuid4())} for _ in range(400)]
    assert json.loads(encode([*batch, {"k": "hello", "f": setup}], "me"))["f"] == setup
    now = [1000.0]
    relay = WakeRelay(
        "postgresql://unused", WakeHub(), EventHub(), origin="me", monotonic=lambda: now[0],
        setup={"streams": "mine"},
    )  # fmt: skip
    relay.announce()
    assert relay._queue.get_nowait() == {"k": "hello", "f": {"streams": "mine"}}
    relay._on_notify(None, 1, "parity_wake", json.dumps({"o": "p1", "h": 1, "f": setup}))
    relay._on_notify(None, 1, "parity_wake", json.dumps({"o": "p2", "h": 1}))  # an older one
    assert relay.peer_setups() == [setup]
    assert relay.received == 0  # an announcement is not a wake-up
    relay._on_notify(None, 1, "parity_wake", json.dumps({"o": "p1", "b": 1}))
    assert relay.peer_setups() == []
    relay._on_notify(None, 1, "parity_wake", json.dumps({"o": "p1", "h": 1, "f": setup}))
    now[0] += 31  # not heard for PEER_TTL_SECONDS: forgotten with its settings
    assert relay.peer_setups() == [] and relay.peers == 0


def test_wake_ups_go_out_only_while_another_replica_was_heard_recently():
    now = [1000.0]
    relay = WakeRelay(
        "postgresql://unused", WakeHub(), EventHub(), origin="me", monotonic=lambda: now[0]
    )
    relay.attach()
    relay.wakeups.wake_any(1)
    assert relay._queue.empty() and relay.dropped == 1  # alone: nothing to send
    relay.send({"k": "tokens"})  # a token-cache clear always goes
    relay.announce()
    assert relay._queue.qsize() == 2

    relay._on_notify(None, 1, "parity_wake", json.dumps({"o": "peer", "h": 1}))
    assert relay.peers == 1
    answer = [relay._queue.get_nowait() for _ in range(relay._queue.qsize())][-1]
    assert answer == {"k": "hello"}  # a newcomer is answered, so it learns we listen
    relay._on_notify(None, 1, "parity_wake", json.dumps({"o": "peer", "h": 1}))
    assert relay._queue.empty()  # a known peer's periodic announcement is not answered

    relay.wakeups.wake_any(1)
    assert relay._queue.qsize() == 1  # a peer listens: the wake-up is queued

    now[0] += 31.0  # more than PEER_TTL_SECONDS without a word from it
    assert relay.peers == 0
    relay._queue.get_nowait()
    relay.wakeups.wake_any(1)
    assert relay._queue.empty() and relay.dropped == 2


def test_resource_wake_ups_travel_with_their_owners_and_are_applied():
    merged = merge(
        [
            {"k": "events", "a": ["0xb"], "d": False, "s": ["p1"]},
            {"k": "events", "a": ["0xc"], "d": False, "s": ["p2", "p1"]},
        ],
        "me",
    )
    assert merged["a"] == ["0xb", "0xc"] and merged["s"] == ["p1", "p2"]
    hub = EventHub()
    woken: list[tuple[list[str], list[str]]] = []

    def record(owners: Any, *, deliveries: bool, forward: bool, resources: Any = ()) -> int:
        woken.append((list(owners), list(resources)))
        return 0

    hub.publish = record  # type: ignore[method-assign]
    relay = WakeRelay.__new__(WakeRelay)
    relay.events, relay.tokens = hub, None
    relay.apply({"o": "other", "a": ["0xb"], "s": ["p1"]})
    assert woken == [(["0xb"], ["p1"])]


def test_a_farewell_forgets_its_sender_at_once_and_applies_what_came_with_it():
    relay = WakeRelay("postgresql://unused", WakeHub(), EventHub(), origin="me")
    relay._on_notify(None, 1, "parity_wake", json.dumps({"o": "peer", "h": 1}))
    assert relay.peers == 1
    batch = [{"k": "any", "n": 2}, {"k": "bye"}]
    assert merge(batch, "peer") == {"o": "peer", "n": 2, "b": 1}
    relay._on_notify(None, 1, "parity_wake", encode(batch, "peer"))
    assert relay.peers == 0  # gone now, not PEER_TTL_SECONDS later
    assert relay.received == 1  # its last wake-up was applied
    big = [{"k": "runner", "r": str(uuid.uuid4())} for _ in range(400)] + [{"k": "bye"}]
    assert json.loads(encode(big, "peer"))["b"] == 1  # an oversized batch keeps the farewell
