"""Cross-replica wake-ups over PostgreSQL LISTEN/NOTIFY (ARCHITECTURE §2 "Long-poll").

Each server process keeps one dedicated connection that LISTENs on ``parity_wake`` and sends
the wake-ups this process raised, after their transaction committed, as small JSON
notifications. Another replica applies them to its own in-process hubs: a runner long-polling
there is woken when a task was created here, an /events reader when an event was committed
here. Nothing depends on a notification arriving: waiters still re-check every few seconds, so
a lost notification (or a relay that is down) only costs latency. The one notification that is
not a wake-up, "a token was revoked here: clear your token cache", is bounded the same way by
AUTH_CACHE_SECONDS: a replica that misses it forgets the revoked token within that time.

Wake-ups are only sent while another replica is known to listen: every replica announces
itself (``"h": 1``) when it connects and every ANNOUNCE_SECONDS, and answers a newcomer's
announcement with its own; a replica that heard no other within PEER_TTL_SECONDS keeps its
wake-ups to itself (a lone server then sends nothing, where it paid a NOTIFY round trip and
the delivery of its own notification for every completed task). A replica that has just started
and not yet been heard is covered by its waiters' re-checks. Token-cache clears are always sent.

Wake-ups queued while the previous notification was being sent are merged into one, so a
busy server sends a few notifications per round trip, not one per task. A notification is
``{"o": <sender's origin id>, "r": [<runner id>...], "n": <wake-any count>, "p": <poke the push
loop>, "a": [<event owner>...] | null (every reader), "d": <webhook deliveries were queued>,
"t": 1 (clear the token cache), "h": 1 (the sender listens), "b": 1 (the sender stops: forget
it now, not PEER_TTL_SECONDS later), "f": {<setting>: <fingerprint>} (with "h": the sender's
settings that must agree between replicas, e.g. which stream bus it relays tokens over, as a
hash: URLs may hold credentials)}``, keys left out when empty; a replica ignores its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from parity.auth.cache import TokenCache
from parity.events.hub import EventHub
from parity.logging import get_logger
from parity.tasks.wakeups import WakeHub

CHANNEL = "parity_wake"
ANNOUNCE_SECONDS = 10.0
PEER_TTL_SECONDS = 3 * ANNOUNCE_SECONDS  # three announcements missed: that replica is gone
MAX_PAYLOAD = 7900  # PostgreSQL refuses notification payloads of 8000 bytes or more
log = get_logger("parity.relay")


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """``postgresql+asyncpg://…`` → ``postgresql://…`` (what asyncpg.connect takes)."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    return f"postgresql{sep}{rest}" if scheme.startswith("postgres") else sqlalchemy_url


class WakeRelay:
    def __init__(
        self,
        dsn: str,
        wakeups: WakeHub,
        events: EventHub,
        *,
        origin: str | None = None,
        reconnect_seconds: float = 2.0,
        tokens: TokenCache | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        setup: dict[str, str] | None = None,
    ) -> None:
        self.dsn = dsn
        self.origin = origin or uuid.uuid4().hex[:12]
        self.wakeups = wakeups
        self.events = events
        self.tokens = tokens
        self.reconnect_seconds = reconnect_seconds
        self.received = 0  # notifications from other replicas applied here (not announcements)
        self.sent = 0  # notifications sent that carried more than an announcement
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._monotonic = monotonic
        self._peers: dict[str, float] = {}  # origin -> when last heard (monotonic)
        self.setup = dict(setup or {})  # what this replica announces of its settings
        self._setups: dict[str, dict[str, str]] = {}  # origin -> what it announced
        self._announcer: asyncio.Task[None] | None = None
        self._farewell_sent = asyncio.Event()
        self.dropped = 0  # wake-ups not sent: no other replica listening
        # Called when a replica not heard in the last PEER_TTL_SECONDS speaks.
        self.on_new_peer: Callable[[], None] | None = None

    @property
    def peers(self) -> int:
        """Other replicas heard within PEER_TTL_SECONDS."""
        cutoff = self._monotonic() - PEER_TTL_SECONDS
        for origin in [o for o, at in self._peers.items() if at < cutoff]:
            del self._peers[origin]
            self._setups.pop(origin, None)
        return len(self._peers)

    def peer_setups(self) -> list[dict[str, str]]:
        """What each replica heard within PEER_TTL_SECONDS announced of its settings."""
        self.peers  # noqa: B018 - forgets the replicas not heard lately
        return list(self._setups.values())

    # -- wiring ----------------------------------------------------------------------------------

    def attach(self) -> None:
        """Forward this process's wake-ups and token-cache clears to the other replicas."""
        self.wakeups.forward = self.send
        self.events.forward = self.send
        if self.tokens is not None:
            self.tokens.forward = self.send

    def send(self, message: dict[str, Any]) -> None:
        """Queue a wake-up for the other replicas (never blocks; drops when the queue is full,
        which only costs them latency). Wake-ups are dropped at once while no other replica
        listens; token-cache clears and announcements always go."""
        if message.get("k") not in _ALWAYS_SENT and not self.peers:
            self.dropped += 1
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(message)

    def announce(self) -> None:
        self.send({"k": "hello", "f": self.setup} if self.setup else {"k": "hello"})

    async def _announce_loop(self) -> None:
        while True:
            await asyncio.sleep(ANNOUNCE_SECONDS)
            self.announce()

    async def start(self, timeout: float = 10.0) -> None:
        self.attach()
        self._task = asyncio.create_task(self._run(), name="wake-relay")
        self._announcer = asyncio.create_task(self._announce_loop(), name="wake-relay-announce")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)

    async def stop(self, farewell_timeout: float = 2.0) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
        if self.connected and self.peers:
            # Tell the others at once, so they stop counting (and waking) this replica.
            self.send({"k": "bye"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._farewell_sent.wait(), farewell_timeout)
        self.wakeups.forward = None
        self.events.forward = None
        if self.tokens is not None:
            self.tokens.forward = None
        for task in (self._announcer, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._announcer = None
        await self._close()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    # -- the connection --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                self._conn = await asyncpg.connect(self.dsn, timeout=10)
                await self._conn.add_listener(CHANNEL, self._on_notify)
                self.announce()  # listening (again): the others may send to us
                self._ready.set()
                log.info("wake_relay_listening", origin=self.origin)
                await self._send_loop(self._conn)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("wake_relay_down", error=str(exc)[:200])
            finally:
                await self._close()
            await asyncio.sleep(self.reconnect_seconds)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def _send_loop(self, conn: asyncpg.Connection) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            payload = encode(batch, self.origin)
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
            if any(m.get("k") not in ("hello", "bye") for m in batch):
                self.sent += 1
            if any(m.get("k") == "bye" for m in batch):
                self._farewell_sent.set()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("o") == self.origin:
            return
        origin, now = str(message.get("o")), self._monotonic()
        if message.get("b"):  # that replica stops: apply what it sent with it, then forget it
            self._peers.pop(origin, None)
            self._setups.pop(origin, None)
            if message.keys() - {"o", "h", "b"}:
                self.received += 1
                self.apply(message)
            return
        last = self._peers.get(origin)
        newcomer = last is None or last < now - PEER_TTL_SECONDS
        self._peers[origin] = now
        setup = message.get("f")
        if isinstance(setup, dict):
            self._setups[origin] = {str(k): str(v) for k, v in setup.items()}
        if message.get("h") and newcomer:
            self.announce()  # let a replica that just started know we listen
        if newcomer and self.on_new_peer is not None:
            self.on_new_peer()
        if message.keys() - {"o", "h", "f"}:
            self.received += 1
            self.apply(message)

    def apply(self, message: dict[str, Any]) -> None:
        """Apply another replica's wake-ups to this process's hubs, and its token-cache clear
        to this process's cache (without forwarding them)."""
        if message.get("t") and self.tokens is not None:
            self.tokens.clear(forward=False)
        for rid in message.get("r") or ():
            with contextlib.suppress(ValueError, TypeError):
                self.wakeups.wake_runner(uuid.UUID(str(rid)), forward=False)
        n = message.get("n")
        if isinstance(n, int) and n > 0:
            self.wakeups.wake_any(n, forward=False)
        if message.get("p"):
            self.wakeups.poke_pushes(forward=False)
        if "a" in message:
            owners = message["a"]
            if owners is None:
                self.events.wake_readers(forward=False)
            elif isinstance(owners, list):
                deliveries = bool(message.get("d"))
                about = message.get("s")
                self.events.publish(
                    [str(a) for a in owners],
                    deliveries=deliveries,
                    forward=False,
                    resources=[str(r) for r in about] if isinstance(about, list) else (),
                )


_ALWAYS_SENT = frozenset({"tokens", "hello", "bye"})


def merge(batch: list[dict[str, Any]], origin: str) -> dict[str, Any]:
    """Several queued wake-ups as one notification (see the module docstring)."""
    runners: dict[str, None] = {}
    owners: dict[str, None] | None = {}
    resources: dict[str, None] = {}
    any_count, pushes, events, deliveries, tokens = 0, False, False, False, False
    hello = bye = False
    setup: dict[str, str] | None = None
    for m in batch:
        kind = m.get("k")
        if kind == "hello":
            hello = True
            setup = m.get("f") or setup
        elif kind == "bye":
            bye = True
        elif kind == "runner":
            runners[str(m.get("r"))] = None
        elif kind == "any":
            any_count += int(m.get("n") or 0)
        elif kind == "pushes":
            pushes = True
        elif kind == "tokens":
            tokens = True
        elif kind == "events":
            events = True
            deliveries = deliveries or m.get("d", True) is not False
            resources.update(dict.fromkeys(str(x) for x in m.get("s") or ()))
            a = m.get("a")
            if a is None or owners is None:
                owners = None
            else:
                owners.update(dict.fromkeys(str(x) for x in a))
    out: dict[str, Any] = {"o": origin}
    if runners:
        out["r"] = list(runners)
    if any_count:
        out["n"] = any_count
    if pushes:
        out["p"] = True
    if events:
        out["a"] = None if owners is None else sorted(owners)
        if resources and owners is not None:
            out["s"] = sorted(resources)
        if deliveries:
            out["d"] = True
    if tokens:
        out["t"] = 1
    if hello:
        out["h"] = 1
        if setup:
            out["f"] = setup
    if bye:
        out["b"] = 1
    return out


def encode(batch: list[dict[str, Any]], origin: str) -> str:
    """The notification payload of a batch: merged, or when too long to name every runner and
    owner, "wake everything there" (a token-cache clear is kept either way)."""
    merged = merge(batch, origin)
    payload = json.dumps(merged, separators=(",", ":"))
    if len(payload) <= MAX_PAYLOAD:
        return payload
    everything: dict[str, Any] = {"o": origin, "n": 1 << 20, "p": True, "a": None}
    for key in ("t", "h", "b"):
        if merged.get(key):
            everything[key] = 1
    if merged.get("f"):
        everything["f"] = merged["f"]
    return json.dumps(everything, separators=(",", ":"))
