"""The StreamBus contract for what arrives together, against every adapter (the ``buses``
fixture of ``test_stream_bus``): a batch published at once reaches each subscriber in order, on
the same replica and across Redis, and a reader takes what is queued without waiting, or waits
on the subscription's arrival future."""

from __future__ import annotations

import asyncio

from parity.llm.streams import StreamEvent
from tests.contract.test_stream_bus import Buses, buses, delta, key, read

__all__ = ["buses"]  # a fixture, used by name


async def test_a_batch_reaches_every_subscriber_in_order_after_single_events(buses: Buses):
    pub, sub_bus = buses
    k = key()
    batch = [delta("Hel"), delta(" wörld")]  # within the fixture's buffer of 4, with the rest
    async with sub_bus.subscribe(k) as one, sub_bus.subscribe(k) as two:
        await pub.publish(k, delta("first"))
        await pub.publish_many(k, batch)
        await pub.publish_many(k, [])
        await pub.publish(k, StreamEvent("end", 1))
        expected = [delta("first"), *batch, StreamEvent("end", 1)]
        assert await read(one, len(expected)) == expected
        assert await read(two, len(expected)) == expected


async def test_take_answers_what_is_queued_at_once_and_arrival_waits_for_the_next(buses: Buses):
    pub, sub_bus = buses
    k = key()
    async with sub_bus.subscribe(k) as sub:
        assert sub.take() == []
        arrival = sub.arrival()
        assert not arrival.done()
        await pub.publish_many(k, [delta("a"), delta("b")])
        await asyncio.wait_for(arrival, 5)
        got = sub.take()
        while len(got) < 2:  # across Redis the two may land in separate reads
            await asyncio.wait_for(sub.arrival(), 5)
            got += sub.take()
        assert got == [delta("a"), delta("b")]
        assert sub.take() == [] and not sub.arrival().done()
