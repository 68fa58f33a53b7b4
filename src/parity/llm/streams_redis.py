"""The ``StreamBus`` over Redis pub/sub, for several replicas (``STREAM_BUS_URL=redis://…``):
the runner's stream may reach one server and the client's connection another.

One channel per prompt key (``parity:stream:<key>``). Each replica holds one subscriber
connection for all its subscriptions: the first local subscriber of a key SUBSCRIBEs (and waits
for Redis to confirm, so nothing published after ``subscribe`` returns is missed), the last one
to leave UNSUBSCRIBEs, and one reader task hands each message to the local subscribers' bounded
queues, a ``LocalStreamBus``: the same buffer, overflow and drop rules as on one replica. The
reader never waits on a subscriber, so Redis's output buffer for the connection stays small; a
replica so far behind that Redis drops its connection (``client-output-buffer-limit pubsub``)
reconnects and re-subscribes. Pub/sub keeps nothing for a connection that is away: the deltas
published meanwhile are lost to it. Each delta carries its number within its attempt, so the
first one after the gap shows the hole: the subscription is cut off as after an overflow and
its reader gets the rest of the text from the stored result (``streams``), never text with a
hole in it.

A publish is delivered to this replica's subscribers at once and sent on with one PUBLISH,
awaited, so a runner's stream is paced by Redis rather than queued in memory. Messages carry
their sender's origin id and a replica ignores its own (already delivered).

Redis unreachable: a publish still reaches this replica's subscribers and skips Redis for
``PUBLISH_PAUSE_SECONDS`` at a time; a subscribe proceeds without waiting for the relay; the
reader reconnects with backoff and subscribes again to every key still wanted. Clients then get
the text from the completion instead of token by token (a stream that had started goes on from
the stored result once it completes); nothing fails."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from parity.llm.streams import (
    DEFAULT_BUFFER,
    SharedBusEnd,
    StreamEvent,
    Subscription,
    encode,
)
from parity.logging import get_logger

CHANNEL_PREFIX = "parity:stream:"
READ_SECONDS = 1.0  # the reader's wait per read; a read that times out just loops
RECONNECT_MAX_SECONDS = 5.0
PUBLISH_PAUSE_SECONDS = 1.0  # after a failed PUBLISH, events stay local this long
log = get_logger("parity.streams")
_Errors = (RedisError, OSError)


@dataclass
class _Channel:
    ready: asyncio.Future[None]  # Redis confirmed the SUBSCRIBE (or the bus went down)
    count: int = 0  # local subscriptions of the key


class RedisStreamBus(SharedBusEnd):
    """One replica's end of the shared bus (see the module's docstring). ``timeout`` bounds
    every Redis call and the wait for a SUBSCRIBE's confirmation (the gateway subscribes
    inside the submit's transaction, so it must stay short)."""

    def __init__(
        self,
        url: str,
        *,
        buffer: int = DEFAULT_BUFFER,
        timeout: float = 2.0,
        prefix: str = CHANNEL_PREFIX,
        origin: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(buffer, origin)
        self.timeout = timeout
        self.prefix = prefix
        # One retry: a pooled connection the server closed while idle is reopened once; longer
        # outages are the reader's and the publish pause's business, not a stalled caller's.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            client_name=f"parity-stream:{self.origin}",  # CLIENT LIST shows whose it is
        )
        self._pubsub = self._redis.pubsub()
        self._channels: dict[str, _Channel] = {}
        self._state: Literal["starting", "up", "down", "closed"] = "starting"
        self._reader: asyncio.Task[None] | None = None
        self._monotonic = monotonic
        self._paused_until: float | None = None  # publishes skip Redis until then

    @property
    def connected(self) -> bool:
        """The subscriber connection is up (every wanted key subscribed)."""
        return self._state == "up"

    async def ping(self) -> bool:
        """Whether Redis answers now (for /api/status; never raises)."""
        try:
            return bool(await self._redis.ping())
        except _Errors:
            return False

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, key: str, event: StreamEvent) -> int:
        here = self.local.deliver(key, event)
        if not self._relaying():
            return here
        channel = self.prefix + key
        try:
            reached = int(await self._redis.publish(channel, encode(self.origin, event)))
        except _Errors as exc:
            self._pause(exc)
            return here
        self._resume()
        return here + max(0, reached - self._own_connection(channel))

    async def publish_many(self, key: str, events: Sequence[StreamEvent]) -> None:
        """Delivered here at once; sent on as one pipeline of PUBLISHes (one round trip for a
        chunk's lines instead of one per line)."""
        for event in events:
            self.local.deliver(key, event)
        if not events or not self._relaying():
            return
        channel = self.prefix + key
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.publish(channel, encode(self.origin, event))
                await pipe.execute()
        except _Errors as exc:
            self._pause(exc)
            return
        self._resume()

    def _relaying(self) -> bool:
        """Whether publishes go to Redis now (not closed, not paused after a failure)."""
        return self._state != "closed" and (
            self._paused_until is None or self._monotonic() >= self._paused_until
        )

    def _pause(self, exc: BaseException) -> None:
        if self._paused_until is None:
            log.warning("stream_bus_publish_failed", error=str(exc)[:200])
        self._paused_until = self._monotonic() + PUBLISH_PAUSE_SECONDS

    def _resume(self) -> None:
        if self._paused_until is not None:
            log.info("stream_bus_publish_restored")
            self._paused_until = None

    async def subscribers(self, key: str) -> int:
        """Local subscriptions plus the other replicas' (PUBSUB NUMSUB counts each replica's
        connection once); the local count alone when Redis does not answer."""
        here = self.local.count(key)
        if self._state == "closed":
            return here
        channel = self.prefix + key
        try:
            answer = cast(list[tuple[Any, int]], await self._redis.pubsub_numsub(channel))
        except _Errors:
            return here
        total = int(answer[0][1]) if answer else 0
        return here + max(0, total - self._own_connection(channel))

    def _own_connection(self, channel: str) -> int:
        """1 when this replica's connection is among a channel's Redis subscribers."""
        return 1 if channel in self._channels and self._state == "up" else 0

    # -- subscribing ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscribe(self, key: str) -> AsyncIterator[Subscription]:
        channel = self.prefix + key
        async with self.local.subscribe(key) as sub:
            ready, send = self._join(channel)
            try:
                await self._confirm(channel, ready, send)
                yield sub
            finally:
                await self._leave(channel)

    def _join(self, channel: str) -> tuple[asyncio.Future[None], bool]:
        """Count a local subscription (synchronously, so the reader's re-subscribe sees it);
        whether this caller must send the SUBSCRIBE: the key is new here and the connection is
        up (otherwise the reader subscribes every wanted key when it connects)."""
        if self._state != "closed" and (self._reader is None or self._reader.done()):
            self._reader = asyncio.get_running_loop().create_task(self._run())
        ch = self._channels.get(channel)
        new = ch is None
        if ch is None:
            ch = self._channels[channel] = _Channel(asyncio.get_running_loop().create_future())
        ch.count += 1
        return ch.ready, new and self._state == "up"

    async def _confirm(self, channel: str, ready: asyncio.Future[None], send: bool) -> None:
        if send:
            try:
                await self._pubsub.subscribe(channel)
            except _Errors as exc:
                self._went_down(exc)  # the reader reconnects and subscribes every wanted key
                return
        if self._state in ("down", "closed"):
            return  # no relay for now: the gateway falls back to the stored result
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.timeout)
        except TimeoutError:
            log.warning("stream_bus_subscribe_unconfirmed", channel=channel, seconds=self.timeout)

    async def _leave(self, channel: str) -> None:
        ch = self._channels.get(channel)
        if ch is None:
            return
        ch.count -= 1
        if ch.count > 0:
            return
        del self._channels[channel]
        if self._state == "up":
            # Lost with a broken connection, the UNSUBSCRIBE is made good on reconnect.
            with contextlib.suppress(*_Errors):
                await self._pubsub.unsubscribe(channel)

    # -- the reader ----------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                if self._state != "up":
                    await self._connect()
                    delay = 0.1
                message = await self._pubsub.get_message(timeout=READ_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the relay must outlive any one failure
                self._went_down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            if message is not None:
                self._handle(message)

    async def _connect(self) -> None:
        """(Re)connect, subscribe to every key wanted here (including keys joined while this
        runs: it loops until none is missing) and drop what is no longer wanted."""
        await self._pubsub.connect()  # type: ignore[no-untyped-call]
        sent: set[str] = set()
        while todo := [c for c in self._channels if c not in sent]:
            await self._pubsub.subscribe(*todo)
            sent.update(todo)
        stale = [c for c in list(self._pubsub.channels) if _text(c) not in self._channels]
        if stale:
            await self._pubsub.unsubscribe(*stale)
        if self._state == "down":
            log.info("stream_bus_restored", channels=len(sent))
        self._state = "up"

    def _went_down(self, exc: BaseException) -> None:
        if self._state == "closed":
            return
        if self._state != "down":
            log.warning("stream_bus_down", error=str(exc)[:200])
        self._state = "down"
        for ch in self._channels.values():  # subscribers waiting for a confirmation go on
            if not ch.ready.done():
                ch.ready.set_result(None)

    def _handle(self, message: dict[str, Any]) -> None:
        channel = _text(message.get("channel"))
        kind = message.get("type")
        if kind == "subscribe":
            ch = self._channels.get(channel)
            if ch is not None and not ch.ready.done():
                ch.ready.set_result(None)
        elif kind == "message" and channel.startswith(self.prefix):
            self.deliver_remote(channel[len(self.prefix) :], message.get("data"))

    async def aclose(self) -> None:
        """Stop relaying; subscriptions still open go on with this replica's own events."""
        self._state = "closed"
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        with contextlib.suppress(*_Errors):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(*_Errors):
            await self._redis.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
