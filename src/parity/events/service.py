"""Events and webhook subscriptions: emit (event + outbox rows in the caller's transaction),
endpoint management (the secret is shown once; rotation keeps the old one valid for a day),
delivery history, redelivery and the owner-scoped event stream."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.auth.schemas import Principal
from parity.clock import Clock, utc_iso
from parity.db.hooks import after_commit
from parity.db.pagination import Cursor
from parity.events import repository as repo
from parity.events.errors import (
    DeliveryNotFound,
    TooManyWebhooks,
    UnknownEventType,
    WebhookDisabled,
    WebhookNotFound,
    WebhookUrlRefused,
)
from parity.events.hub import EventHub
from parity.events.models import Event, WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint
from parity.events.schemas import EVENT_TYPES, WebhookCreate, WebhookUpdate
from parity.webhooks.signing import new_secret
from parity.webhooks.ssrf import UrlRefused, resolve_and_check

ROTATION_OVERLAP = timedelta(hours=24)
# Every event fans out to each subscribed endpoint of its owner: bound the fan-out.
MAX_ENDPOINTS_PER_OWNER = 25


@dataclass(frozen=True)
class EventDeps:
    clock: Clock
    random_bytes: Callable[[int], bytes]
    hub: EventHub
    admins: frozenset[str]
    allow_private_webhooks: bool
    visibility_lag_seconds: float

    @property
    def admins_sorted(self) -> list[str]:
        return sorted(self.admins)


def check_types(types: Sequence[str], field: str = "events") -> list[str]:
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise UnknownEventType(
            field, f"unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}"
        )
    return list(dict.fromkeys(types))


async def emit(
    session: AsyncSession,
    deps: EventDeps,
    type: str,
    owner_address: str,
    data: dict[str, Any],
    resource_id: str | None = None,
) -> Event:
    """Record an event and one pending delivery per enabled endpoint subscribed to it (the
    owner's and the operators'), in the caller's transaction. After commit the delivery loop
    and the /events waiters of that owner are woken."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    now = deps.clock.now()
    owner = owner_address.lower()
    event = Event(
        id=uuid.uuid4(),
        type=type,
        owner_address=owner,
        resource_id=resource_id,
        data=data,
        created_at=now,
    )
    await repo.add_event(session, event)
    count = await repo.fan_out(session, event, deps.admins_sorted)
    hub = deps.hub
    deliveries = count > 0

    about = () if resource_id is None else (resource_id,)

    def wake() -> None:
        hub.publish([owner], deliveries=deliveries, resources=about)

    after_commit(session, wake)
    return event


@dataclass(frozen=True)
class NewEvent:
    """One event of a batch for :func:`emit_many`."""

    type: str
    owner_address: str
    data: dict[str, Any]
    resource_id: str | None = None


async def emit_many(session: AsyncSession, deps: EventDeps, items: Sequence[NewEvent]) -> None:
    """:func:`emit` for several events in one pass (an FL round's task rows): one batched
    insert, and the per-event fan-out only when some owner of the batch (or an operator) has
    an enabled endpoint at all, which one query tells."""
    if not items:
        return
    for item in items:
        if item.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {item.type!r}")
    now = deps.clock.now()
    events = [
        Event(
            id=uuid.uuid4(),
            type=item.type,
            owner_address=item.owner_address.lower(),
            resource_id=item.resource_id,
            data=item.data,
            created_at=now,
        )
        for item in items
    ]
    await repo.add_events(session, events)
    owners = sorted({e.owner_address for e in events})
    deliveries = False
    if await repo.any_endpoint(session, [*owners, *deps.admins_sorted]):
        for event in events:
            deliveries = await repo.fan_out(session, event, deps.admins_sorted) > 0 or deliveries
    hub = deps.hub
    found = deliveries
    about = sorted({e.resource_id for e in events if e.resource_id is not None})

    def wake() -> None:
        hub.publish(owners, deliveries=found, resources=about)

    after_commit(session, wake)


def _new_delivery(endpoint_id: uuid.UUID, event_id: uuid.UUID, now: datetime) -> WebhookDelivery:
    """A pending delivery of one event to one endpoint, due now."""
    return WebhookDelivery(
        id=uuid.uuid4(),
        endpoint_id=endpoint_id,
        event_id=event_id,
        status=repo.PENDING,
        attempts=0,
        next_attempt_at=now,
        last_status_code=None,
        last_error=None,
        delivered_at=None,
        created_at=now,
    )


def envelope(event: Event) -> dict[str, Any]:
    """What a delivery carries (and what the stream sends): {id, type, created_at, data}."""
    return {
        "id": str(event.id),
        "type": event.type,
        "created_at": utc_iso(event.created_at),
        "data": event.data,
    }


# -- endpoints


async def _check_url(deps: EventDeps, url: str) -> str:
    try:
        await resolve_and_check(url, allow_private=deps.allow_private_webhooks)
    except UrlRefused as exc:
        raise WebhookUrlRefused("url", exc.reason) from None
    return url


def _visible(principal: Principal, endpoint: WebhookEndpoint | None) -> bool:
    return endpoint is not None and (
        principal.is_admin or endpoint.owner_address == principal.address
    )


async def create_endpoint(
    session: AsyncSession, deps: EventDeps, principal: Principal, body: WebhookCreate
) -> tuple[WebhookEndpoint, str]:
    """Subscribe a URL to event types; returns the endpoint and its secret (shown once)."""
    types = check_types(body.events)
    url = await _check_url(deps, body.url)
    if await repo.count_endpoints(session, principal.address) >= MAX_ENDPOINTS_PER_OWNER:
        raise TooManyWebhooks(
            f"an account may have {MAX_ENDPOINTS_PER_OWNER} webhook endpoints; delete one first",
            details={"limit": MAX_ENDPOINTS_PER_OWNER},
        )
    now = deps.clock.now()
    secret = new_secret(deps.random_bytes(32))
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        owner_address=principal.address,
        url=url,
        description=body.description,
        secret=secret,
        previous_secret=None,
        previous_secret_expires_at=None,
        event_types=types,
        enabled=True,
        disabled_reason=None,
        disabled_at=None,
        consecutive_failures=0,
        failing_since=None,
        next_attempt_at=None,
        created_at=now,
        updated_at=now,
    )
    await repo.add_endpoint(session, endpoint)
    return endpoint, secret


async def get_endpoint(
    session: AsyncSession, principal: Principal, endpoint_id: uuid.UUID, *, lock: bool = False
) -> WebhookEndpoint:
    endpoint = await repo.get_endpoint(session, endpoint_id, lock=lock)
    # Someone else's endpoint answers like a missing one.
    if endpoint is None or not _visible(principal, endpoint):
        raise WebhookNotFound(f"webhook {endpoint_id} not found")
    return endpoint


async def list_endpoints(
    session: AsyncSession, principal: Principal, limit: int, after: Cursor | None
) -> list[WebhookEndpoint]:
    owner = None if principal.is_admin else principal.address
    return await repo.list_endpoints(session, owner, limit, after)


async def update_endpoint(
    session: AsyncSession,
    deps: EventDeps,
    principal: Principal,
    endpoint_id: uuid.UUID,
    body: WebhookUpdate,
) -> WebhookEndpoint:
    endpoint = await get_endpoint(session, principal, endpoint_id, lock=True)
    fields = body.model_dump(exclude_unset=True)
    if body.url is not None:
        endpoint.url = await _check_url(deps, body.url)
    if body.events is not None:
        endpoint.event_types = check_types(body.events)
    if "description" in fields:
        endpoint.description = body.description
    now = deps.clock.now()
    reenabled = body.enabled is True and not endpoint.enabled
    if body.enabled is True:
        # (Re-)enabling resets the breaker and the endpoint's back-off: it is tried at once.
        endpoint.enabled = True
        endpoint.disabled_reason = None
        endpoint.disabled_at = None
        endpoint.consecutive_failures = 0
        endpoint.failing_since = None
        endpoint.next_attempt_at = None
    elif body.enabled is False and endpoint.enabled:
        endpoint.enabled = False
        endpoint.disabled_reason = "disabled by its owner"
        endpoint.disabled_at = now
    endpoint.updated_at = now
    await session.flush()
    if reenabled:
        # What waited while it was disabled is sent now, not at each delivery's next retry.
        await repo.deliveries_due_now(session, endpoint.id, now)
    if endpoint.enabled:
        hub = deps.hub
        after_commit(session, hub.poke_delivery)  # a re-enabled endpoint has a backlog
    return endpoint


async def delete_endpoint(
    session: AsyncSession, principal: Principal, endpoint_id: uuid.UUID
) -> None:
    endpoint = await get_endpoint(session, principal, endpoint_id, lock=True)
    await repo.delete_endpoint(session, endpoint)


async def rotate_secret(
    session: AsyncSession, deps: EventDeps, principal: Principal, endpoint_id: uuid.UUID
) -> tuple[WebhookEndpoint, str]:
    """New secret (shown once); the current one keeps signing for ROTATION_OVERLAP, so each
    message carries both signatures meanwhile. Only two are ever valid."""
    endpoint = await get_endpoint(session, principal, endpoint_id, lock=True)
    now = deps.clock.now()
    secret = new_secret(deps.random_bytes(32))
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = now + ROTATION_OVERLAP
    endpoint.secret = secret
    endpoint.updated_at = now
    await session.flush()
    return endpoint, secret


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    secrets = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        secrets.append(endpoint.previous_secret)
    return secrets


# -- deliveries


async def list_deliveries(
    session: AsyncSession,
    principal: Principal,
    endpoint_id: uuid.UUID,
    limit: int,
    after: Cursor | None,
) -> tuple[list[tuple[WebhookDelivery, str]], dict[uuid.UUID, list[WebhookDeliveryAttempt]]]:
    endpoint = await get_endpoint(session, principal, endpoint_id)
    rows = await repo.list_deliveries(session, endpoint.id, limit, after)
    attempts = await repo.attempts_of(session, [d.id for d, _ in rows[:limit]])
    return rows, attempts


async def _ahead_of_backlog(
    session: AsyncSession, endpoint_id: uuid.UUID, now: datetime
) -> datetime:
    """The due time of a redelivery: now, or just before the endpoint's earliest pending
    delivery, so that it is the next one sent (a failing endpoint is tried one delivery at a
    time, oldest due first)."""
    earliest = await repo.earliest_pending_due(session, endpoint_id)
    if earliest is None:
        return now
    return min(now, earliest - timedelta(microseconds=1))


async def redeliver(
    session: AsyncSession, deps: EventDeps, principal: Principal, delivery_id: uuid.UUID
) -> tuple[WebhookDelivery, str]:
    """Queue the same event to the same endpoint again (same ``webhook-id``), due now even
    when the endpoint is backing off."""
    old = await repo.get_delivery(session, delivery_id)
    endpoint = await repo.get_endpoint(session, old.endpoint_id) if old is not None else None
    if old is None or not _visible(principal, endpoint):
        raise DeliveryNotFound(f"delivery {delivery_id} not found")
    assert endpoint is not None
    if not endpoint.enabled:
        raise WebhookDisabled(
            "the endpoint is disabled; re-enable it first (PUT enabled=true)",
            details={"disabled_reason": endpoint.disabled_reason},
        )
    event = await repo.get_event(session, old.event_id)
    if event is None:
        raise DeliveryNotFound(f"the event of delivery {delivery_id} was pruned")
    now = deps.clock.now()
    row = _new_delivery(endpoint.id, event.id, now)
    row.next_attempt_at = await _ahead_of_backlog(session, endpoint.id, now)
    await repo.add_deliveries(session, [row])
    # Asked for by hand: a failing endpoint is tried now, not after its back-off.
    await repo.endpoint_try_now(session, endpoint.id)
    after_commit(session, deps.hub.poke_delivery)
    return row, event.type


# -- the stream


async def read_events(
    session: AsyncSession,
    deps: EventDeps,
    principal: Principal,
    *,
    after: int,
    types: Sequence[str] | None,
    limit: int,
) -> list[Event]:
    """The caller's events (everyone's for an operator) after the cursor, oldest first.
    Events younger than the visibility lag wait: on PostgreSQL a lower ``seq`` may still be
    committing, and a reader that moved past it would never see it."""
    cutoff = deps.clock.now() - timedelta(seconds=deps.visibility_lag_seconds)
    return await repo.events_after(
        session,
        owner=None if principal.is_admin else principal.address,
        after=after,
        visible_before=cutoff,
        types=types,
        limit=limit,
    )
