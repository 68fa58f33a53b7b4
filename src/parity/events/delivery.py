"""Webhook delivery from the outbox. Network I/O happens outside any transaction: due rows are
read, claimed with one conditional UPDATE, POSTed concurrently through the SSRF guard with a
short timeout (at most ``per_endpoint`` in flight per endpoint), and every outcome is recorded
in one short write transaction. A failure backs off exponentially with jitter, per delivery
and per endpoint, and a delivery is retried until ``retry_for_seconds`` have passed since it was
queued (the breaker's window by default, so an endpoint that comes back before it is disabled
gets every event): while an endpoint is failing it is tried one delivery at a time on its own
back-off, so a burst of events does not hammer a receiver that is down, and its first success
lets the backlog through. Only an endpoint that has failed continuously for a long time
(``disable_after_seconds`` and at least ``disable_min_failures`` attempts) is disabled (circuit
breaker). Receivers de-duplicate on ``webhook-id`` (the event id), which a retry or a
redelivery reuses."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from parity import __version__
from parity.clock import Clock, utc_iso
from parity.db.session import Database
from parity.events import repository as repo
from parity.events.models import Event, WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint
from parity.events.service import envelope, signing_secrets
from parity.jobs.locks import NoLock
from parity.jobs.loop import BackgroundLoop
from parity.logging import get_logger
from parity.webhooks import signing
from parity.webhooks.ssrf import UrlRefused, post_json

log = get_logger("parity.events.delivery")

MAX_BACKOFF_SECONDS = 3600
# A failing endpoint's back-off stops growing here (before jitter), so one that comes back
# gets its backlog within minutes.
ENDPOINT_MAX_BACKOFF_SECONDS = 600.0
# The breaker's defaults (WEBHOOK_DISABLE_AFTER_HOURS, WEBHOOK_DISABLE_MIN_FAILURES).
DISABLE_AFTER_SECONDS = 72 * 3600.0
# How long a delivery is retried after it was queued (WEBHOOK_RETRY_HOURS).
RETRY_FOR_SECONDS = 72 * 3600.0
DISABLE_MIN_FAILURES = 10


@dataclass(frozen=True)
class DeliveryDeps:
    clock: Clock
    random: Callable[[], float]  # uniform in [0, 1): the jitter source
    allow_private: bool
    timeout_seconds: float = 5.0
    # A delivery whose attempt fails this long after it was queued is failed for good.
    retry_for_seconds: float = RETRY_FOR_SECONDS
    # The breaker: disabled once no delivery has succeeded for this long AND at least this
    # many attempts failed meanwhile.
    disable_after_seconds: float = DISABLE_AFTER_SECONDS
    disable_min_failures: int = DISABLE_MIN_FAILURES
    endpoint_max_backoff_seconds: float = ENDPOINT_MAX_BACKOFF_SECONDS
    per_endpoint: int = 2
    batch: int = 100


def backoff_seconds(attempts: int, rand: float, cap: float = MAX_BACKOFF_SECONDS) -> float:
    """min(2^attempts, cap) seconds, scaled by a jitter factor in [0.8, 1.2]."""
    return min(2.0 ** min(attempts, 62), cap) * (0.8 + 0.4 * rand)


def body_of(event: Event) -> bytes:
    return json.dumps(envelope(event), separators=(",", ":")).encode()


@dataclass
class Outgoing:
    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    url: str
    secrets: list[str]
    message_id: str
    body: bytes
    attempts: int
    queued_at: datetime


@dataclass
class Outcome:
    item: Outgoing
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.error is None


def _outgoing(d: WebhookDelivery, ep: WebhookEndpoint, ev: Event, now: datetime) -> Outgoing:
    return Outgoing(
        delivery_id=d.id,
        endpoint_id=ep.id,
        url=ep.url,
        secrets=signing_secrets(ep, now),
        message_id=str(ev.id),
        body=body_of(ev),
        attempts=d.attempts,
        queued_at=d.created_at,
    )


async def take_due(
    db: Database,
    deps: DeliveryDeps,
    *,
    exclude: set[uuid.UUID] | None = None,
    busy: dict[uuid.UUID, int] | None = None,
) -> list[Outgoing]:
    """Read due deliveries (no transaction held), keep at most ``per_endpoint`` per endpoint
    minus what is already in flight (one, and only when none is in flight, for a failing
    endpoint), then claim them, and the next try of the failing endpoints, in one short
    write."""
    now = deps.clock.now()
    busy = busy or {}
    async with db.read_session() as s:
        rows = await repo.due(s, now, deps.batch, deps.per_endpoint, exclude or set())
    picked: list[Outgoing] = []
    failing: set[uuid.UUID] = set()
    taken: dict[uuid.UUID, int] = defaultdict(int)
    for d, ep, ev in rows:
        limit = 1 if ep.consecutive_failures > 0 else deps.per_endpoint
        if busy.get(ep.id, 0) + taken[ep.id] >= limit:
            continue
        if ep.consecutive_failures > 0:
            failing.add(ep.id)
        taken[ep.id] += 1
        picked.append(_outgoing(d, ep, ev, now))
    if not picked:
        return []
    hold = timedelta(seconds=max(60.0, 4 * deps.timeout_seconds))
    async with db.transaction() as s:
        held = await repo.hold_endpoints(s, sorted(failing), now, now + hold)
        picked = [p for p in picked if p.endpoint_id not in failing or p.endpoint_id in held]
        claimed = await repo.claim(s, [p.delivery_id for p in picked], now, now + hold)
    return [p for p in picked if p.delivery_id in claimed]


async def send(item: Outgoing, deps: DeliveryDeps) -> Outcome:
    """One signed POST. Never raises: every failure becomes an Outcome with an error."""
    ts = int(deps.clock.now().timestamp())
    sigs = " ".join(signing.sign(s, item.message_id, ts, item.body) for s in item.secrets)
    headers = {
        "webhook-id": item.message_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sigs,
        "content-type": "application/json",
        "user-agent": f"parity-server/{__version__}",
    }
    started = deps.clock.monotonic()
    status: int | None = None
    error: str | None
    try:
        status = await post_json(
            item.url,
            item.body,
            headers,
            allow_private=deps.allow_private,
            timeout=deps.timeout_seconds,
        )
        error = None if 200 <= status < 300 else f"HTTP {status}"
    except UrlRefused as exc:
        error = f"refused: {exc.reason}"
    except TimeoutError:
        error = f"timed out after {deps.timeout_seconds:g}s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    elapsed = max(deps.clock.monotonic() - started, 0.0)
    return Outcome(item, status, error[:500] if error else None, int(elapsed * 1000))


async def record(db: Database, deps: DeliveryDeps, outcomes: list[Outcome]) -> None:
    """Attempt rows, delivery states and endpoint states (back-off, breaker), in one short
    write."""
    if not outcomes:
        return
    async with db.transaction() as s:
        now = deps.clock.now()
        # An endpoint deleted while its POST was in flight took its deliveries with it.
        alive = await repo.existing_deliveries(s, [o.item.delivery_id for o in outcomes])
        for o in outcomes:
            if o.item.delivery_id not in alive:
                continue
            attempt = o.item.attempts + 1
            await repo.add_attempt(
                s,
                WebhookDeliveryAttempt(
                    id=uuid.uuid4(),
                    delivery_id=o.item.delivery_id,
                    attempt=attempt,
                    status_code=o.status_code,
                    error=o.error,
                    duration_ms=o.duration_ms,
                    created_at=now,
                ),
            )
            values: dict[str, object] = {
                "attempts": attempt,
                "last_status_code": o.status_code,
                "last_error": o.error,
            }
            if o.ok:
                values.update(status=repo.DELIVERED, delivered_at=now, next_attempt_at=now)
                await repo.update_delivery(s, o.item.delivery_id, values)
                await repo.endpoint_succeeded(s, o.item.endpoint_id)
                continue
            if now - o.item.queued_at >= timedelta(seconds=deps.retry_for_seconds):
                values.update(status=repo.FAILED, next_attempt_at=now)
            else:
                delay = backoff_seconds(attempt, deps.random())
                values["next_attempt_at"] = now + timedelta(seconds=delay)
            await repo.update_delivery(s, o.item.delivery_id, values)
            await _endpoint_failed(s, deps, o, now)


async def _endpoint_failed(s: AsyncSession, deps: DeliveryDeps, o: Outcome, now: datetime) -> None:
    """Count the failure against the endpoint, back it off, and trip the breaker once it has
    failed continuously for ``disable_after_seconds`` with ``disable_min_failures`` attempts."""
    state = await repo.endpoint_failed(s, o.item.endpoint_id, now)
    if state is None:
        return
    failures, since = state
    delay = backoff_seconds(failures, deps.random(), deps.endpoint_max_backoff_seconds)
    await repo.endpoint_back_off(s, o.item.endpoint_id, now + timedelta(seconds=delay))
    if failures < deps.disable_min_failures:
        return
    if now - since < timedelta(seconds=deps.disable_after_seconds):
        return
    reason = (
        f"circuit breaker: no delivery succeeded since {utc_iso(since)} "
        f"({failures} failed attempts in a row; last: {o.error})"
    )
    if await repo.disable_endpoint(s, o.item.endpoint_id, now, reason):
        log.warning("webhook_disabled", endpoint_id=str(o.item.endpoint_id), reason=reason)


async def deliver_due(db: Database, deps: DeliveryDeps) -> int:
    """One round: take what is due, send it all concurrently, record. Returns how many."""
    items = await take_due(db, deps)
    if not items:
        return 0
    outcomes = await asyncio.gather(*(send(i, deps) for i in items))
    await record(db, deps, list(outcomes))
    return len(outcomes)


@dataclass
class _InFlight:
    ids: set[uuid.UUID] = field(default_factory=set)
    per_endpoint: dict[uuid.UUID, int] = field(default_factory=lambda: defaultdict(int))


class DeliveryLoop:
    """Woken after an event commits (and re-checking every ``interval`` seconds), it starts
    one task per endpoint batch and does not wait for it: a slow or dead endpoint holds only
    its own slots, never the others' deliveries."""

    def __init__(
        self, db: Database, deps: DeliveryDeps, event: asyncio.Event, *, interval: float
    ) -> None:
        self.db = db
        self.deps = deps
        self.event = event
        self.interval = interval
        self._sends: set[asyncio.Task[None]] = set()
        self._flight = _InFlight()
        self.loop: BackgroundLoop[bool, int] = BackgroundLoop(
            "webhook-delivery",
            self._dispatch,
            NoLock(),
            interval=interval,
            clock=deps.clock,
            wake=event,
            log_ticks=False,
            random=deps.random,
        )

    async def dispatch(self) -> int:
        items = await take_due(
            self.db, self.deps, exclude=set(self._flight.ids), busy=self._flight.per_endpoint
        )
        groups: dict[uuid.UUID, list[Outgoing]] = defaultdict(list)
        for item in items:
            groups[item.endpoint_id].append(item)
            self._flight.ids.add(item.delivery_id)
            self._flight.per_endpoint[item.endpoint_id] += 1
        for group in groups.values():
            task = asyncio.create_task(self._send_group(group), name="webhook-send")
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        return len(items)

    async def _send_group(self, group: list[Outgoing]) -> None:
        try:
            outcomes = await asyncio.gather(*(send(i, self.deps) for i in group))
            await record(self.db, self.deps, list(outcomes))
        except Exception as exc:
            log.warning("webhook_record_failed", error=type(exc).__name__, detail=str(exc)[:200])
        finally:
            for item in group:
                self._flight.ids.discard(item.delivery_id)
                left = self._flight.per_endpoint[item.endpoint_id] - 1
                if left > 0:
                    self._flight.per_endpoint[item.endpoint_id] = left
                else:
                    self._flight.per_endpoint.pop(item.endpoint_id, None)
            self.event.set()  # a freed slot may have a backlog behind it

    async def _dispatch(self, _held: bool) -> int:
        return await self.dispatch()

    def start(self) -> None:
        self.loop.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work; sends in flight get ``timeout`` to finish and record."""
        await self.loop.stop(timeout)
        if self._sends:
            _, pending = await asyncio.wait(set(self._sends), timeout=timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
