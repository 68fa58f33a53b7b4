"""The streaming leg's relay (ARCHITECTURE §4): token deltas a runner posts for a prompt reach
the client connections that wait on it. ``StreamBus`` is the port; ``LocalStreamBus`` relays
within one process (one replica); ``RedisStreamBus`` (``streams_redis``, chosen by
``STREAM_BUS_URL=redis://…``) and ``NatsStreamBus`` (``streams_nats``, ``nats://…``) relay
between replicas, so the runner's stream and the client's connection may reach different
servers. ``open_stream_bus`` picks one.

Buffers are bounded: a subscriber that falls behind by more than ``buffer`` events is cut off
with an ``overflow`` terminal event rather than holding the runner's request up; the gateway
then sends the rest of the text from the prompt's stored result. A publish with no subscriber
is dropped (nobody is listening; the whole text is stored with the completion anyway).

Deltas are numbered within their attempt (``seq``, from 0, by the replica that takes the
runner's stream). A subscription that sees a number skipped has missed deltas on the way (a
shared bus that was down, or dropped a slow replica's connection, while the runner streamed):
it is cut off with the same ``overflow`` event, so its reader never relays text with a hole in
it and gets the rest from the stored result. A subscription expects each attempt's deltas from
the first (the gateway subscribes before the prompt exists); deltas without a number (an older
replica's) are taken as they come.

``publish``, ``publish_many`` and ``subscribers`` are coroutines because a shared bus answers
over the network; the in-process bus never suspends in them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from parity.config import NATS_BUS_SCHEMES

EventKind = Literal["delta", "end", "overflow"]
DEFAULT_BUFFER = 1024
BusKind = Literal["in-process", "redis", "nats"]


@dataclass(frozen=True)
class StreamEvent:
    """``delta``: text of attempt ``attempt``, the ``seq``-th of that attempt (from 0; None
    when the publisher does not number them); ``end``: that attempt's stream closed (the
    runner finished sending, or its connection broke: ``broken``); ``overflow``: this
    subscriber fell behind, or missed deltas, and was cut off (terminal)."""

    kind: EventKind
    attempt: int = 0
    text: str = ""
    broken: bool = False
    seq: int | None = None


class Subscription(Protocol):
    async def next(self, timeout: float) -> StreamEvent | None:
        """The next event, or None when none came within ``timeout`` seconds."""
        ...

    def take(self) -> list[StreamEvent]:
        """Every event queued now, oldest first, without waiting (empty when none): a reader
        handles what arrived together in one go."""
        ...

    def arrival(self) -> asyncio.Future[None]:
        """A future that is done once an event is queued (already done when one is); a reader
        waits on it beside other things (its client's hang-up) without a task per wait."""
        ...


class StreamBus(Protocol):
    async def publish(self, key: str, event: StreamEvent) -> int:
        """Hand ``event`` to every subscriber of ``key``, on any replica sharing the bus;
        returns how many it reached (0: nobody listens) as far as the bus can tell without
        waiting: exactly for the in-process and Redis buses; the NATS bus counts this
        replica's subscribers and the other replicas' as :meth:`subscribers` last counted
        them. Never raises for an unreachable shared bus: the event is dropped, as the stored
        result carries the text anyway."""
        ...

    async def publish_many(self, key: str, events: Sequence[StreamEvent]) -> None:
        """:meth:`publish` of each of ``events`` in order (what arrived together): a shared
        bus sends them in one round trip."""
        ...

    def subscribe(self, key: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """Receive the events of ``key`` published from now on (once entered), until the
        context exits."""
        ...

    async def subscribers(self, key: str) -> int:
        """Open subscriptions of ``key`` on every replica sharing the bus (a shared bus may
        count a replica's several subscriptions of one key once: the gateway holds one per
        prompt)."""
        ...

    async def ping(self) -> bool:
        """Whether the shared bus answers now (always, for the in-process bus); never raises:
        the status page reports a shared bus that does not."""
        ...

    async def aclose(self) -> None:
        """Release connections and background work (at shutdown)."""
        ...


def encode(origin: str, event: StreamEvent) -> bytes:
    """An event as a shared bus carries it between replicas, with its sender's origin id."""
    body: dict[str, Any] = {
        "o": origin, "k": event.kind, "a": event.attempt, "t": event.text, "b": event.broken,
    }  # fmt: skip
    if event.seq is not None:
        body["s"] = event.seq
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode(data: object) -> tuple[str, StreamEvent] | None:
    """(origin, event) of a message, or None for anything this bus did not write. Only
    ``delta`` and ``end`` travel: ``overflow`` is a subscriber's own state. A message without
    a number (``s``: an older replica's) decodes without one."""
    try:
        body = json.loads(cast(bytes, data))
        kind = body["k"]
        if kind not in ("delta", "end"):
            return None
        seq = body.get("s")
        event = StreamEvent(
            kind, int(body["a"]), str(body["t"]), bool(body["b"]),
            None if seq is None else int(seq),
        )  # fmt: skip
        return str(body["o"]), event
    except (ValueError, KeyError, TypeError):
        return None


class _LocalSubscription:
    """A bounded queue of events with one waiter future: no task or timer while events are
    already queued, one future per wait otherwise."""

    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self.queue: deque[StreamEvent] = deque()
        self.cut_off = False
        self._waiter: asyncio.Future[None] | None = None
        self._next: dict[int, int] = {}  # attempt -> the number its next delta must carry

    def offer(self, event: StreamEvent) -> bool:
        if self.cut_off:
            return False
        if len(self.queue) >= self.buffer or not self._in_sequence(event):
            # Make room for the terminal event: what was queued is superseded by the stored
            # result the reader falls back to.
            self.cut_off = True
            self.queue.clear()
            self.queue.append(StreamEvent("overflow"))
            self._wake()
            return False
        self.queue.append(event)
        self._wake()
        return True

    def _in_sequence(self, event: StreamEvent) -> bool:
        """False for a numbered delta that is not the next of its attempt: those between were
        lost on the way (or it came twice), so the text would have a hole."""
        if event.kind != "delta" or event.seq is None:
            return True
        expected = self._next.get(event.attempt, 0)
        if event.seq != expected:
            return False
        self._next[event.attempt] = expected + 1
        return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> list[StreamEvent]:
        out = list(self.queue)
        self.queue.clear()
        return out

    def arrival(self) -> asyncio.Future[None]:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # A done future stays done: a new one for the next wait.
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        if self.queue:
            waiter.set_result(None)
        return waiter

    async def next(self, timeout: float) -> StreamEvent | None:
        if not self.queue:
            await asyncio.wait((self.arrival(),), timeout=timeout)
        return self.queue.popleft() if self.queue else None


class LocalStreamBus:
    """In-process relay; every operation is non-blocking on the publisher's side (the
    subscriber's bounded queue absorbs bursts). ``deliver`` and ``count`` are the synchronous
    core, also the local fan-out of the Redis adapter."""

    def __init__(self, buffer: int = DEFAULT_BUFFER) -> None:
        self.buffer = buffer
        self._subs: dict[str, set[_LocalSubscription]] = {}

    def deliver(self, key: str, event: StreamEvent) -> int:
        """Offer ``event`` to this process's subscribers of ``key``; how many took it."""
        return sum(1 for s in list(self._subs.get(key, ())) if s.offer(event))

    def count(self, key: str) -> int:
        return len(self._subs.get(key, ()))

    async def publish(self, key: str, event: StreamEvent) -> int:
        return self.deliver(key, event)

    async def publish_many(self, key: str, events: Sequence[StreamEvent]) -> None:
        for event in events:
            self.deliver(key, event)

    async def subscribers(self, key: str) -> int:
        return self.count(key)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None

    @contextlib.asynccontextmanager
    async def subscribe(self, key: str) -> AsyncIterator[Subscription]:
        sub = _LocalSubscription(self.buffer)
        self._subs.setdefault(key, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._subs.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[key]


class SharedBusEnd:
    """What every shared bus's end in a replica holds: its origin id (carried by each message
    it publishes), its local subscribers (a ``LocalStreamBus``: the same buffer, overflow and
    gap rules as on one replica) and the count of events other replicas relayed here."""

    def __init__(self, buffer: int, origin: str | None) -> None:
        self.origin = origin or uuid.uuid4().hex[:12]
        self.local = LocalStreamBus(buffer)
        self.received = 0  # events from other replicas handed to subscribers here

    def deliver_remote(self, key: str, data: object) -> None:
        """Hand a message of the shared bus to this replica's subscribers of ``key``, unless
        this bus did not write it or this replica published it (delivered then)."""
        decoded = decode(data)
        if decoded is None or decoded[0] == self.origin:
            return
        self.received += 1
        self.local.deliver(key, decoded[1])


def stream_bus_kind(url: str) -> BusKind:
    """Which bus STREAM_BUS_URL names (as /api/status reports it)."""
    if not url:
        return "in-process"
    return "nats" if url.startswith(NATS_BUS_SCHEMES) else "redis"


def open_stream_bus(url: str, *, buffer: int = DEFAULT_BUFFER) -> StreamBus:
    """The bus STREAM_BUS_URL names: empty → in-process (one replica); ``redis://``,
    ``rediss://`` or ``unix://`` → Redis pub/sub shared by the replicas; ``nats://`` or
    ``tls://`` (several servers of one cluster comma-separated) → NATS. A shared bus's client
    is imported only when configured."""
    kind = stream_bus_kind(url)
    if kind == "in-process":
        return LocalStreamBus(buffer)
    if kind == "nats":
        from parity.llm.streams_nats import NatsStreamBus

        return NatsStreamBus(url, buffer=buffer)
    from parity.llm.streams_redis import RedisStreamBus

    return RedisStreamBus(url, buffer=buffer)
