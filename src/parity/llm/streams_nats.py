"""The ``StreamBus`` over NATS core pub/sub, for several replicas (``STREAM_BUS_URL=nats://…``):
the runner's stream may reach one server and the client's connection another.

Two subjects per prompt key: ``parity.stream.d.<key>`` carries its events and
``parity.stream.w.<key>`` asks who listens. Each replica holds one NATS connection for all its
subscriptions, opened with ``no_echo`` (the server never hands a replica its own publishes
back: it delivered them to its own subscribers at once). The first local subscriber of a key
subscribes both subjects and waits for the server's answer to a PING sent after them (so
nothing published, and no "who listens" asked, after ``subscribe`` returns misses it); the
last one to leave unsubscribes. Each message is handed to the local subscribers' bounded
queues, a ``LocalStreamBus``: the same buffer, overflow and drop rules as on one replica, and
the callback never waits on a subscriber.

Counting: :meth:`NatsStreamBus.subscribers` sends one request on the key's who-subject. With no
other replica subscribed the server answers at once with its "no responders" status; otherwise
every replica holding the key answers with its number of subscriptions, gathered until no other
answer came for as long as the first one took (at least ``GATHER_MIN_SECONDS``, at most
``gather``): the replicas share the server, so their answers arrive within about one round trip
of each other. The last local subscriber of a key drains its
subscriptions (unsubscribe, then a round trip that delivers whatever the server sent before):
a request that reached the server just before a replica left is still answered, with 0. The
first answer is awaited for ``ANSWER_SECONDS`` at most (a replica whose event loop is stuck
does not hold the count for the full ``timeout``). A publish adds the other replicas' count as
last gathered for its key, so it never waits on a round of answers.

NATS unreachable: a publish still reaches this replica's subscribers; a subscribe proceeds
without waiting for the relay (it waits, up to ``timeout``, only for the first connection);
the connection is reopened with backoff and every key still wanted is subscribed again. Core
NATS keeps nothing for a connection that is away: the deltas published meanwhile are lost to
it. Each delta carries its number within its attempt, so the first one after the gap shows the
hole and the subscription is cut off as after an overflow; its reader gets the rest of the text
from the stored result (``streams``), never text with a hole in it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import nats
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.errors import Error as NatsError

from parity.llm.streams import (
    DEFAULT_BUFFER,
    SharedBusEnd,
    StreamEvent,
    Subscription,
    encode,
)
from parity.logging import get_logger

SUBJECT_PREFIX = "parity.stream"
ANSWER_SECONDS = 1.0  # how long "who listens" waits for a first answer (or "no responders")
GATHER_SECONDS = 0.01  # after an answer to "who listens", the longest wait for another
GATHER_MIN_SECONDS = 0.002  # ... and the shortest (the first answer's round trip if longer)
RECONNECT_MAX_SECONDS = 5.0
REMOTE_COUNTS_KEPT = 4096  # keys whose other-replica count a publish may add
log = get_logger("parity.streams")
_Errors = (NatsError, OSError, asyncio.TimeoutError)
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def subject_token(key: str) -> str:
    """``key`` as one subject token: itself when it is letters, digits, ``-`` and ``_`` (a
    prompt's task id), else ``x`` and its UTF-8 hex (a ``.`` or ``*`` would change the
    subject's meaning)."""
    if key and all(ch in _KEY_CHARS for ch in key):
        return key
    return "x" + key.encode().hex()


@dataclass
class _Channel:
    count: int = 0  # local subscriptions of the key
    conn: NatsClient | None = None  # the connection its subjects are subscribed on
    subs: list[NatsSubscription] = field(default_factory=list)


class NatsStreamBus(SharedBusEnd):
    """One replica's end of the shared bus (see the module's docstring). ``timeout`` bounds
    every wait on NATS: a connection, a subscription's confirmation, the first answer to "who
    listens" (the gateway subscribes inside the submit's transaction, so it must stay short)."""

    def __init__(
        self,
        url: str,
        *,
        buffer: int = DEFAULT_BUFFER,
        timeout: float = 2.0,
        prefix: str = SUBJECT_PREFIX,
        origin: str | None = None,
        gather: float = GATHER_SECONDS,
    ) -> None:
        super().__init__(buffer, origin)
        self.servers = [part.strip() for part in url.split(",") if part.strip()]
        self.timeout = timeout
        self.gather = gather
        self.prefix = prefix
        self._channels: dict[str, _Channel] = {}
        self._remote: OrderedDict[str, int] = OrderedDict()
        self._nc: NatsClient | None = None
        self._state: Literal["idle", "starting", "up", "down", "closed"] = "idle"
        self._up = asyncio.Event()
        self._tried = asyncio.Event()  # the first connection was opened, or failed
        self._lost = asyncio.Event()
        self._connector: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """The connection is up (every wanted key subscribed)."""
        return self._state == "up"

    def _data(self, key: str) -> str:
        return f"{self.prefix}.d.{subject_token(key)}"

    def _who(self, key: str) -> str:
        return f"{self.prefix}.w.{subject_token(key)}"

    # -- the connection --------------------------------------------------------------------------

    def _start(self) -> None:
        if self._state == "closed" or (self._connector is not None and not self._connector.done()):
            return
        if self._state == "idle":
            self._state = "starting"
        self._connector = asyncio.get_running_loop().create_task(self._run())

    async def _first_connection(self) -> None:
        """Start connecting if nothing did yet; while the first connection is being opened,
        wait for it (up to ``timeout``). Later outages are not waited for."""
        self._start()
        if self._state == "starting":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tried.wait(), self.timeout)

    async def _run(self) -> None:
        delay = 0.1
        while self._state != "closed":
            try:
                await self._connect()
                delay = 0.1
                await self._lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the relay must outlive any one failure
                self._went_down(exc)
                self._tried.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            self._went_down(ConnectionError("connection to NATS closed"))

    async def _connect(self) -> None:
        """Open a connection and subscribe every key wanted here (keys joined while this runs
        included: it loops until none is missing)."""
        # One event per connection: a late callback of the connection before (its close
        # reported after this one opened) must not end this one.
        lost = self._lost = asyncio.Event()

        async def closed() -> None:
            lost.set()

        async def error(exc: Exception) -> None:
            log.debug("stream_bus_nats_error", error=str(exc)[:200])

        nc = await nats.connect(
            servers=self.servers,
            name=f"parity-stream:{self.origin}",
            no_echo=True,
            # Reconnection is this class's: every key is subscribed again on a new connection.
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.05,
            connect_timeout=max(1, round(self.timeout)),
            closed_cb=closed,
            disconnected_cb=closed,
            error_cb=error,
        )
        if self._state == "closed":
            await nc.close()
            return
        _ping_after_pending(nc)
        self._nc = nc
        try:
            # Until a check finds every wanted key subscribed, with no await between that check
            # and "up" below: a key joined while this awaits (its subscribe saw the bus down
            # and left it to this loop) is subscribed here, not missed.
            while todo := [(k, ch) for k, ch in self._channels.items() if ch.conn is not nc]:
                for key, ch in todo:
                    await self._subscribe_on(nc, key, ch)
                    if self._channels.get(key) is not ch:  # left meanwhile
                        await _unsubscribe(ch.subs)
                await _flush(nc, self.timeout)
        except BaseException:
            self._nc = None
            with contextlib.suppress(*_Errors):
                await nc.close()
            raise
        if self._state == "down":
            log.info("stream_bus_restored", channels=len(self._channels))
        self._state = "up"
        self._up.set()
        self._tried.set()

    async def _subscribe_on(self, nc: NatsClient, key: str, ch: _Channel) -> None:
        ch.conn = nc  # before awaiting: a concurrent join does not subscribe it again
        ch.subs = []

        async def on_event(msg: Msg) -> None:
            self.deliver_remote(key, msg.data)

        async def on_who(msg: Msg) -> None:
            if msg.reply:
                count = self.local.count(key)
                with contextlib.suppress(*_Errors):
                    await nc.publish(msg.reply, orjson.dumps({"o": self.origin, "n": count}))

        ch.subs.append(await nc.subscribe(self._data(key), cb=on_event))
        ch.subs.append(await nc.subscribe(self._who(key), cb=on_who))

    def _went_down(self, exc: BaseException) -> None:
        if self._state == "closed":
            return
        if self._state != "down":
            log.warning("stream_bus_down", error=str(exc)[:200])
        self._state = "down"
        self._up.clear()
        self._nc = None
        for ch in self._channels.values():
            ch.conn = None
            ch.subs = []

    async def ping(self) -> bool:
        """Whether NATS answers now (for /api/status; never raises)."""
        await self._first_connection()
        nc = self._nc
        if self._state != "up" or nc is None:
            return False
        try:
            await _flush(nc, self.timeout)
        except _Errors:
            return False
        return True

    # -- publishing ------------------------------------------------------------------------------

    async def publish(self, key: str, event: StreamEvent) -> int:
        here = self.local.deliver(key, event)
        if not await self._send(key, (event,)):
            return here
        return here + self._remote.get(key, 0)

    async def publish_many(self, key: str, events: Sequence[StreamEvent]) -> None:
        """Delivered here at once; sent on together (the client writes them in one go)."""
        for event in events:
            self.local.deliver(key, event)
        if events:
            await self._send(key, events)

    async def _send(self, key: str, events: Sequence[StreamEvent]) -> bool:
        if self._state in ("idle", "starting"):
            await self._first_connection()
        nc = self._nc
        if self._state != "up" or nc is None:
            return False
        subject = self._data(key)
        try:
            for event in events:
                await nc.publish(subject, encode(self.origin, event))
        except _Errors as exc:
            self._went_down(exc)
            return False
        return True

    async def subscribers(self, key: str) -> int:
        """Local subscriptions plus the other replicas' (each answers with its own count); the
        local count alone when NATS does not answer."""
        here = self.local.count(key)
        if self._state in ("idle", "starting"):
            await self._first_connection()
        nc = self._nc
        if self._state != "up" or nc is None:
            return here
        try:
            remote = await self._gather(nc, key)
        except _Errors:
            return here
        self._remote[key] = remote
        self._remote.move_to_end(key)
        while len(self._remote) > REMOTE_COUNTS_KEPT:
            self._remote.popitem(last=False)
        return here + remote

    async def _gather(self, nc: NatsClient, key: str) -> int:
        inbox = nc.new_inbox()
        answers = await nc.subscribe(inbox)
        try:
            await nc.publish(self._who(key), b"", reply=inbox)
            total = 0
            started = time.monotonic()
            deadline = started + self.timeout
            wait = ANSWER_SECONDS  # for the first answer; then as long as it took, for each next
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = await answers.next_msg(timeout=min(wait, left))
                except _Errors:
                    break
                if msg.headers and msg.headers.get("Status") == "503":
                    break  # no responders: nobody else holds the key
                total += _count(msg.data, self.origin)
                if wait == ANSWER_SECONDS:
                    took = time.monotonic() - started
                    wait = min(self.gather, max(GATHER_MIN_SECONDS, took))
            return total
        finally:
            with contextlib.suppress(*_Errors):
                await answers.unsubscribe()

    # -- subscribing -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscribe(self, key: str) -> AsyncIterator[Subscription]:
        async with self.local.subscribe(key) as sub:
            ch = self._channels.get(key)
            if ch is None:
                ch = self._channels[key] = _Channel()
            ch.count += 1
            try:
                await self._confirm(key, ch)
                yield sub
            finally:
                await self._leave(key)

    async def _confirm(self, key: str, ch: _Channel) -> None:
        if self._state in ("idle", "starting"):
            await self._first_connection()  # the connector subscribes it with the others
        nc = self._nc
        if self._state != "up" or nc is None:
            return  # no relay for now: the gateway falls back to the stored result
        try:
            if ch.conn is not nc:
                await self._subscribe_on(nc, key, ch)
            await _flush(nc, self.timeout)  # the server has the SUB before anything is published
        except _Errors as exc:
            log.warning("stream_bus_subscribe_unconfirmed", key=key, error=str(exc)[:200])

    async def _leave(self, key: str) -> None:
        ch = self._channels.get(key)
        if ch is None:
            return
        ch.count -= 1
        if ch.count > 0:
            return
        del self._channels[key]
        if ch.conn is not None and ch.conn is self._nc:
            await self._drain(ch.subs)

    async def _drain(self, subs: list[NatsSubscription]) -> None:
        """Unsubscribe ``subs``, answering what the server sent before it had the UNSUB (a
        "who listens" request in flight gets its answer instead of silence)."""
        try:
            drains = (s.drain() for s in subs)  # type: ignore[no-untyped-call]
            await asyncio.wait_for(asyncio.gather(*drains), self.timeout)
        except _Errors:
            await _unsubscribe(subs)

    async def aclose(self) -> None:
        """Stop relaying; subscriptions still open go on with this replica's own events."""
        self._state = "closed"
        self._up.clear()
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
            self._connector = None
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(*_Errors):
                await nc.close()


def _ping_after_pending(nc: NatsClient) -> None:
    """Make every flush of ``nc`` (this module's and nats-py's own, the one a subscription's
    ``drain`` makes after its UNSUB) write the commands nats-py still holds before its PING.

    nats-py queues a SUB, UNSUB or PUB in its buffer for its flusher task but writes a PING
    straight to the socket, ahead of that buffer: its PONG could come back before the server
    read a SUB sent just before (another replica's request or publish would then miss the
    subscription), or an UNSUB (a drain would end while the server still routes "who listens"
    requests to the subscription, which nats-py then drops: the asker waits out its timeout).
    So the buffer goes to the socket first (the flusher awaited), and the PING follows it."""
    ping = nc.flush

    async def flush(timeout: int = 10) -> None:
        started = time.monotonic()
        await asyncio.wait_for(nc._flush_pending(force_flush=True), timeout)
        left = timeout - (time.monotonic() - started)
        if left <= 0:
            raise TimeoutError("NATS did not take the pending commands in time")
        await ping(cast(int, left))

    nc.flush = flush  # type: ignore[method-assign]


async def _flush(nc: NatsClient, timeout: float) -> None:
    """The server has everything sent on ``nc`` so far (:func:`_ping_after_pending`): a PING
    answered within ``timeout`` (nats-py's annotation says int; the timeout goes to
    ``asyncio.wait_for``, which takes seconds as a float)."""
    await nc.flush(cast(int, timeout))


async def _unsubscribe(subs: list[NatsSubscription]) -> None:
    for nsub in subs:
        with contextlib.suppress(*_Errors):
            await nsub.unsubscribe()


def _count(data: bytes, origin: str) -> int:
    """The number of subscriptions another replica reports (0 for anything else)."""
    try:
        body: Any = orjson.loads(data)
        if body["o"] == origin:
            return 0
        return max(0, int(body["n"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return 0
