"""What only the NATS stream bus does (the contract every bus keeps is in test_stream_bus.py):
deliver a replica's own events once (the server does not echo them back), count the other
replicas' subscriptions by asking them, carry on without NATS, and subscribe every key again on
a new connection after the server went away, the deltas lost meanwhile cutting the
subscription off instead of leaving a hole. The outage tests run a private ``nats-server``
they stop and start."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from parity.config import ConfigError, load_settings
from parity.llm import streams_nats
from parity.llm.streams import StreamEvent, open_stream_bus
from parity.llm.streams_nats import NatsStreamBus, subject_token
from tests.conftest import until
from tests.contract.nats_service import NatsServer, nats_server_binary, nats_url


def key() -> str:
    return str(uuid.uuid4())


def delta(text: str, seq: int | None = None, attempt: int = 1) -> StreamEvent:
    return StreamEvent("delta", attempt, text, seq=seq)


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[NatsStreamBus, NatsStreamBus]]:
    url = nats_url()
    a = NatsStreamBus(url, origin="replica-a")
    b = NatsStreamBus(url, origin="replica-b")
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_a_replica_delivers_its_own_events_once_and_counts_the_others_subscriptions(
    replicas: tuple[NatsStreamBus, NatsStreamBus],
):
    a, b = replicas
    k = key()
    async with a.subscribe(k) as sub, b.subscribe(k), b.subscribe(k):
        assert await a.subscribers(k) == 3  # its own, and b's two (b answers with its count)
        assert await b.subscribers(k) == 3
        assert await a.publish(k, delta("1")) == 3
        await a.publish(k, delta("2"))
        # Published after a's own two: nothing of a's comes back to a through the server.
        await b.publish(k, StreamEvent("end", 1))
        got = [await sub.next(5) for _ in range(3)]
        assert got == [delta("1"), delta("2"), StreamEvent("end", 1)]
        assert await sub.next(0.05) is None
    assert a.received == 1  # only b's event came through NATS


async def test_keys_that_are_not_one_subject_token_still_reach_only_their_subscribers(
    replicas: tuple[NatsStreamBus, NatsStreamBus],
):
    a, b = replicas
    dotted, wild = "prompt.1", "prompt.>"
    assert subject_token(dotted) != subject_token(wild)
    assert "." not in subject_token(dotted) and ">" not in subject_token(wild)
    async with b.subscribe(dotted) as one, b.subscribe(wild) as other:
        await a.publish(wild, StreamEvent("end", 2))
        await a.publish(dotted, StreamEvent("end", 1))
        assert await one.next(5) == StreamEvent("end", 1)
        assert await other.next(5) == StreamEvent("end", 2)
        assert await one.next(0.05) is None


# Rounds of "b subscribes a new key, a counts it / publishes to it at once": the moment in which
# a subscription could reach the server only after its subscribe returned is short, so it is
# probed many times.
ROUNDS = 300
ROUNDS_AFTER_OUTAGE = 100


async def _fresh_keys_are_seen_at_once(a: NatsStreamBus, b: NatsStreamBus, rounds: int) -> None:
    """Each round, ``b`` subscribes a new key on its connection, already up, and ``a`` asks at
    once: once ``subscribe`` returned, the server has the subscription, so ``a``'s count
    includes it and ``a``'s publish reaches it."""
    for n in range(rounds):
        counted, published = key(), key()
        async with b.subscribe(counted):
            assert await a.subscribers(counted) == 1, f"round {n}: b's subscription not counted"
        async with b.subscribe(published) as sub:
            await a.publish(published, StreamEvent("end", 1))
            assert await sub.next(5) == StreamEvent("end", 1), f"round {n}: a's event lost"


async def test_once_subscribe_returns_another_replica_counts_it_and_its_publishes_reach_it(
    replicas: tuple[NatsStreamBus, NatsStreamBus],
):
    a, b = replicas
    async with b.subscribe(key()):  # both connections up: each later key subscribes on them
        assert await a.subscribers(key()) == 0
        assert a.connected and b.connected
        await _fresh_keys_are_seen_at_once(a, b, ROUNDS)


async def test_a_subscribe_and_a_leave_write_their_commands_before_the_confirming_ping(
    replicas: tuple[NatsStreamBus, NatsStreamBus],
):
    """On the wire: SUB before the PING whose PONG confirms it (so a ``subscribe`` that returned
    is known to the server), UNSUB before the PING of the drain (so the server has stopped
    routing "who listens" to the subscription when the drain ends: otherwise such a request is
    dropped and its asker waits out its timeout)."""
    _, b = replicas
    async with b.subscribe(key()):  # connected
        pass
    nc = b._nc
    assert nc is not None
    transport = nc._transport
    wire: list[bytes] = []
    write, writelines = transport.write, transport.writelines

    def recorded_write(data: bytes) -> None:
        wire.append(bytes(data))
        write(data)

    def recorded_writelines(parts: list[bytes]) -> None:
        wire.append(b"".join(parts))
        writelines(parts)

    transport.write, transport.writelines = recorded_write, recorded_writelines
    try:
        for _ in range(20):
            wire.clear()
            async with b.subscribe(key()):
                subscribed = b"".join(wire)
                wire.clear()
            left = b"".join(wire)
            assert subscribed.index(b"SUB ") < subscribed.rindex(b"PING"), subscribed
            assert left.index(b"UNSUB ") < left.rindex(b"PING"), left
    finally:
        transport.write, transport.writelines = write, writelines


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_without_nats_publish_and_subscribe_still_work_within_the_replica():
    bus = NatsStreamBus(f"nats://127.0.0.1:{_closed_port()}", timeout=0.5)
    try:
        k = key()
        started = time.monotonic()
        async with bus.subscribe(k) as sub:
            assert await bus.publish(k, delta("only here")) == 1
            assert await bus.publish(k, StreamEvent("end", 1)) == 1
            assert await sub.next(1) == delta("only here")
            assert await sub.next(1) == StreamEvent("end", 1)
            assert await bus.subscribers(k) == 1
        assert time.monotonic() - started < 5  # nothing waited on NATS longer than its timeout
        assert not bus.connected
        assert await bus.ping() is False
    finally:
        await bus.aclose()


@pytest.fixture
def private_nats() -> Iterator[NatsServer]:
    server = NatsServer(nats_server_binary())
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_after_the_server_comes_back_every_key_is_subscribed_again_and_the_gap_cuts_off(
    private_nats: NatsServer,
):
    a = NatsStreamBus(private_nats.url, origin="replica-a", timeout=1.0)
    b = NatsStreamBus(private_nats.url, origin="replica-b", timeout=1.0)
    k, later = key(), key()
    try:
        async with b.subscribe(k) as sub:
            assert await a.subscribers(k) == 1
            await a.publish(k, delta("Hel", 0))
            assert await sub.next(5) == delta("Hel", 0)

            private_nats.stop()
            await until(lambda: not a.connected and not b.connected)
            assert await a.ping() is False
            await a.publish(k, delta("lo", 1))  # nobody relays it: lost to b
            private_nats.start()

            async def both_back() -> bool:
                # b reconnected and subscribed k again (and is done subscribing what it holds)
                return b.connected and await a.subscribers(k) == 1

            await until(both_back)
            assert await a.ping() is True
            await a.publish(k, delta(" world", 2))
            # The delta after the gap shows the hole: cut off, never " world" after "Hel".
            assert await sub.next(5) == StreamEvent("overflow")
            async with b.subscribe(later) as fresh:  # a new key on the new connection
                assert await a.subscribers(later) == 1  # b's subscribe returned: the server has it
                await a.publish(later, StreamEvent("end", 1))
                assert await fresh.next(5) == StreamEvent("end", 1)
            await _fresh_keys_are_seen_at_once(a, b, ROUNDS_AFTER_OUTAGE)
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_nats_url_picks_the_nats_bus_and_the_setting_names_what_is_wrong():
    bus = open_stream_bus("nats://127.0.0.1:4222")  # connects on first use only
    assert isinstance(bus, NatsStreamBus)
    await bus.aclose()
    both = load_settings(
        {"STREAM_BUS_URL": "nats://10.0.0.1:4222, tls://10.0.0.2:4222"}, env_file=None
    )
    assert both.stream_bus_url == "nats://10.0.0.1:4222,tls://10.0.0.2:4222"
    assert NatsStreamBus(both.stream_bus_url).servers == [
        "nats://10.0.0.1:4222",
        "tls://10.0.0.2:4222",
    ]
    for wrong in ("nats://", "nats://10.0.0.1:99999", "nats://10.0.0.1,http://10.0.0.2"):
        with pytest.raises(ConfigError, match="STREAM_BUS_URL"):
            load_settings({"STREAM_BUS_URL": wrong}, env_file=None)


async def test_subscribers_answers_without_waiting_out_its_timeout_when_nobody_else_listens(
    monkeypatch: pytest.MonkeyPatch,
):
    # Only the server's "no responders" status can end these counts early: no answer window.
    monkeypatch.setattr(streams_nats, "ANSWER_SECONDS", 30.0)
    a = NatsStreamBus(nats_url(), origin="replica-a", timeout=30)
    b = NatsStreamBus(nats_url(), origin="replica-b", timeout=30)
    try:
        k = key()
        async with b.subscribe(k):
            assert await a.subscribers(k) == 1
        # b drained its subscriptions on leaving: the server no longer sends b the request
        # (sent to b and dropped unanswered, it would leave a to wait out its 30 s).
        started = time.monotonic()
        assert await a.subscribers(k) == 0
        assert time.monotonic() - started < 10
    finally:
        await a.aclose()
        await b.aclose()
