"""The StreamBus contract, run against every adapter: the in-process bus (publisher and
subscriber on one bus), the Redis bus and the NATS bus (publisher and subscriber on two buses
sharing one Redis or one NATS server: two replicas). Then what only the Redis adapter does:
ignore its own messages coming back, carry on without Redis, and re-subscribe after its
connection is dropped (the NATS adapter's own are in test_stream_bus_nats.py).

A publish's count includes another replica's subscribers as the bus last counted them (the NATS
bus counts only in ``subscribers``), so the tests that check it count first.

Where a test must know that every earlier event was handled before it looks, it publishes a
barrier event on a second key and waits for it: one replica's subscriptions share one
connection, and Redis and NATS deliver in publish order."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from parity.config import ConfigError, load_settings
from parity.llm.streams import (
    LocalStreamBus,
    StreamBus,
    StreamEvent,
    Subscription,
    open_stream_bus,
)
from parity.llm.streams_nats import NatsStreamBus
from parity.llm.streams_redis import RedisStreamBus
from tests.conftest import until
from tests.contract.nats_service import nats_url
from tests.contract.redis_service import redis_url

BUFFER = 4
Buses = tuple[StreamBus, StreamBus]  # (where the runner's stream lands, where the client waits)


@pytest.fixture(params=["local", "redis", "nats"])
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[Buses]:
    a: StreamBus
    b: StreamBus
    if request.param == "local":
        bus = LocalStreamBus(buffer=BUFFER)
        yield bus, bus
        return
    if request.param == "redis":
        a = RedisStreamBus(redis_url(), buffer=BUFFER, origin="replica-a")
        b = RedisStreamBus(redis_url(), buffer=BUFFER, origin="replica-b")
    else:
        a = NatsStreamBus(nats_url(), buffer=BUFFER, origin="replica-a")
        b = NatsStreamBus(nats_url(), buffer=BUFFER, origin="replica-b")
    yield a, b
    await a.aclose()
    await b.aclose()


def key() -> str:
    return str(uuid.uuid4())


def delta(text: str, attempt: int = 1) -> StreamEvent:
    return StreamEvent("delta", attempt, text)


async def read(sub: Subscription, n: int) -> list[StreamEvent]:
    out = []
    for _ in range(n):
        event = await sub.next(5)
        assert event is not None, f"only {len(out)} of {n} events arrived: {out}"
        out.append(event)
    return out


async def test_a_subscriber_gets_each_event_published_after_it_subscribed_in_order(buses: Buses):
    pub, sub_bus = buses
    k = key()
    sent = [delta("Hé"), delta("llo\n"), delta("wörld", 2), StreamEvent("end", 2, broken=True)]
    async with sub_bus.subscribe(k) as sub:
        assert await pub.subscribers(k) == 1
        for event in sent:
            assert await pub.publish(k, event) >= 1
        assert await read(sub, len(sent)) == sent


async def test_an_event_nobody_subscribed_to_is_dropped(buses: Buses):
    pub, sub_bus = buses
    k = key()
    assert await pub.publish(k, delta("early")) == 0
    async with sub_bus.subscribe(k) as sub:
        await pub.publish(k, StreamEvent("end", 1))
        assert await read(sub, 1) == [StreamEvent("end", 1)]  # not the early delta


async def test_every_subscriber_of_a_key_gets_each_event_and_no_other_keys_events(buses: Buses):
    pub, sub_bus = buses
    k, other = key(), key()
    async with (
        sub_bus.subscribe(k) as one,
        sub_bus.subscribe(k) as two,
        sub_bus.subscribe(other) as elsewhere,
    ):
        assert await pub.subscribers(k) >= 1
        assert await pub.publish(k, delta("x")) >= 1
        await pub.publish(other, StreamEvent("end", 1))
        assert await read(elsewhere, 1) == [StreamEvent("end", 1)]
        assert await read(one, 1) == [delta("x")]
        assert await read(two, 1) == [delta("x")]


async def test_subscribers_counts_open_subscriptions_on_every_replica(buses: Buses):
    pub, sub_bus = buses
    k = key()
    assert await pub.subscribers(k) == 0
    async with sub_bus.subscribe(k):
        assert await pub.subscribers(k) == 1
        async with sub_bus.subscribe(k):
            assert await sub_bus.subscribers(k) == 2  # the bus holding them counts each
            assert await pub.subscribers(k) >= 1  # another replica may count them once
        assert await sub_bus.subscribers(k) == 1

    async def none_left() -> bool:
        return await pub.subscribers(k) == 0 and await sub_bus.subscribers(k) == 0

    await until(none_left)


async def test_a_subscriber_that_falls_behind_is_cut_off_with_an_overflow_event(buses: Buses):
    pub, sub_bus = buses
    k, barrier = key(), key()
    async with sub_bus.subscribe(k) as slow, sub_bus.subscribe(barrier) as marks:
        for i in range(BUFFER + 3):  # the publisher is never held up by the slow reader
            await pub.publish(k, delta(str(i)))
        await pub.publish(barrier, StreamEvent("end", 1))
        assert await read(marks, 1) == [StreamEvent("end", 1)]
        # What was queued is superseded: the reader falls back to the stored result.
        assert await read(slow, 1) == [StreamEvent("overflow")]
        await pub.publish(k, delta("later"))
        await pub.publish(barrier, StreamEvent("end", 2))
        assert await read(marks, 1) == [StreamEvent("end", 2)]
        assert await slow.next(0.05) is None  # cut off for good


# -- the Redis adapter -------------------------------------------------------------------------


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[RedisStreamBus, RedisStreamBus]]:
    url = redis_url()
    a = RedisStreamBus(url, origin="replica-a")
    b = RedisStreamBus(url, origin="replica-b")
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_a_replica_delivers_its_own_events_once_not_again_from_redis(
    replicas: tuple[RedisStreamBus, RedisStreamBus],
):
    a, b = replicas
    k = key()
    async with a.subscribe(k) as sub, b.subscribe(k):
        assert await a.publish(k, delta("1")) == 2  # here, and replica b
        await a.publish(k, delta("2"))
        # Published after a's own two: it reaches a through Redis behind their echoes.
        await b.publish(k, StreamEvent("end", 1))
        assert await read(sub, 3) == [delta("1"), delta("2"), StreamEvent("end", 1)]
        assert await sub.next(0.05) is None
    assert a.received == 1  # only b's event came through Redis


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_without_redis_publish_and_subscribe_still_work_within_the_replica():
    bus = RedisStreamBus(f"redis://127.0.0.1:{_closed_port()}/0", timeout=0.5)
    try:
        k = key()
        async with bus.subscribe(k) as sub:
            assert await bus.publish(k, delta("only here")) == 1
            assert await bus.publish(k, StreamEvent("end", 1)) == 1
            assert await read(sub, 2) == [delta("only here"), StreamEvent("end", 1)]
            assert await bus.subscribers(k) == 1
        assert not bus.connected
    finally:
        await bus.aclose()


async def test_a_dropped_subscriber_connection_is_reopened_and_its_keys_subscribed_again(
    replicas: tuple[RedisStreamBus, RedisStreamBus],
):
    a, b = replicas
    k = key()
    admin = aioredis.Redis.from_url(redis_url())
    try:
        async with b.subscribe(k) as sub:
            name = f"parity-stream:{b.origin}"
            ids = [c["id"] for c in await admin.client_list(_type="pubsub") if c["name"] == name]
            assert len(ids) == 1
            await admin.client_kill_filter(_id=ids[0])

            async def reached() -> bool:  # b's reader reconnected and re-subscribed
                return await a.publish(k, delta("ping")) == 1

            await until(reached)
            await a.publish(k, StreamEvent("end", 7))
            while (event := await sub.next(5)) is not None and event == delta("ping"):
                pass
            assert event == StreamEvent("end", 7)
    finally:
        await admin.aclose()


async def test_stream_bus_url_picks_the_adapter_and_refuses_other_schemes():
    assert isinstance(open_stream_bus(""), LocalStreamBus)
    bus = open_stream_bus("redis://127.0.0.1:6379/0")  # connects on first use only
    assert isinstance(bus, RedisStreamBus)
    await bus.aclose()
    with pytest.raises(ConfigError, match="STREAM_BUS_URL"):
        load_settings({"STREAM_BUS_URL": "amqp://127.0.0.1:5672"}, env_file=None)


async def test_a_bus_that_is_up_answers_its_ping(buses: Buses):
    assert all([await bus.ping() for bus in buses])


async def test_a_redis_bus_whose_redis_is_gone_says_so_without_raising():
    bus = RedisStreamBus("redis://127.0.0.1:1/0", timeout=0.5)  # nothing listens on port 1
    try:
        assert await bus.ping() is False
    finally:
        await bus.aclose()
