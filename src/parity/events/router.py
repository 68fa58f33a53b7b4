"""Webhook subscriptions (/webhooks) and the event stream (/events: long-poll or SSE)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from parity.api.deps import (
    ContainerDep,
    CurrentPrincipal,
    Idempotency,
    ReadSession,
    StreamAuth,
    WriteSession,
)
from parity.api.jsonbody import JsonRoute
from parity.api.pagination import BIGINT_MAX, Page, PageParamsDep, make_page
from parity.auth.schemas import Principal
from parity.container import Container
from parity.errors import InvalidInput
from parity.events import service
from parity.events.models import Event, WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint
from parity.events.schemas import (
    DeliveryAttemptRead,
    DeliveryRead,
    EventRead,
    EventsRead,
    SecretRotated,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
    WebhookUpdate,
)

router = APIRouter(route_class=JsonRoute, tags=["webhooks and events"])

MAX_WAIT_SECONDS = 30.0
STREAM_MAX_SECONDS = 1800.0
KEEPALIVE_SECONDS = 15.0


def _read(ep: WebhookEndpoint) -> WebhookRead:
    return WebhookRead(
        id=ep.id,
        owner_address=ep.owner_address,
        url=ep.url,
        description=ep.description,
        events=list(ep.event_types or []),
        enabled=ep.enabled,
        disabled_reason=ep.disabled_reason,
        disabled_at=ep.disabled_at,
        consecutive_failures=ep.consecutive_failures,
        failing_since=ep.failing_since,
        next_attempt_at=ep.next_attempt_at,
        previous_secret_expires_at=ep.previous_secret_expires_at,
        created_at=ep.created_at,
        updated_at=ep.updated_at,
    )


def _delivery(
    d: WebhookDelivery, event_type: str, attempts: list[WebhookDeliveryAttempt]
) -> DeliveryRead:
    return DeliveryRead(
        id=d.id,
        endpoint_id=d.endpoint_id,
        event_id=d.event_id,
        event_type=event_type,
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        delivered_at=d.delivered_at,
        created_at=d.created_at,
        attempt_log=[
            DeliveryAttemptRead(
                attempt=a.attempt,
                status_code=a.status_code,
                error=a.error,
                duration_ms=a.duration_ms,
                created_at=a.created_at,
            )
            for a in attempts
        ],
    )


@router.post("/webhooks", status_code=201, response_model=WebhookCreated)
async def create_webhook(
    body: WebhookCreate,
    principal: CurrentPrincipal,
    session: WriteSession,
    idem: Idempotency,
    c: ContainerDep,
) -> Any:
    """Subscribe a URL to event types. The signing `secret` is in this answer only. With
    `Idempotency-Key`, a repeat answers the endpoint created first with the secret that signs
    now (the stored answer keeps no secret)."""
    stored = await idem.replay()
    if stored is not None:
        return await _replayed(session, principal, stored.body)
    endpoint, secret = await service.create_endpoint(session, c.events, principal, body)
    out = WebhookCreated(**_read(endpoint).model_dump(), secret=secret)
    await idem.remember(201, {**out.model_dump(mode="json"), "secret": None})
    return out


async def _replayed(session: AsyncSession, principal: Principal, body: Any) -> WebhookCreated:
    """The endpoint a repeated creation made, as it is now, with its current secret (404 when
    it was deleted meanwhile)."""
    endpoint = await service.get_endpoint(session, principal, uuid.UUID(body["id"]))
    return WebhookCreated(**_read(endpoint).model_dump(), secret=endpoint.secret)


@router.get("/webhooks", response_model=Page[WebhookRead])
async def list_webhooks(
    principal: CurrentPrincipal, session: ReadSession, page: PageParamsDep
) -> Page[WebhookRead]:
    """Your endpoints (everyone's, for an operator), newest first."""
    rows = await service.list_endpoints(session, principal, page.limit, page.cursor)
    return make_page([_read(r) for r in rows], rows, page.limit)


@router.get("/webhooks/{webhook_id}", response_model=WebhookRead)
async def get_webhook(
    webhook_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSession
) -> WebhookRead:
    """One of your webhook endpoints (its secret is not shown again)."""
    return _read(await service.get_endpoint(session, principal, webhook_id))


@router.put("/webhooks/{webhook_id}", response_model=WebhookRead)
async def update_webhook(
    webhook_id: uuid.UUID,
    body: WebhookUpdate,
    principal: CurrentPrincipal,
    session: WriteSession,
    c: ContainerDep,
) -> WebhookRead:
    """Change url, events, description or enabled; `enabled: true` resets the breaker."""
    return _read(await service.update_endpoint(session, c.events, principal, webhook_id, body))


@router.delete("/webhooks/{webhook_id}", status_code=204)
async def delete_webhook(
    webhook_id: uuid.UUID, principal: CurrentPrincipal, session: WriteSession
) -> Response:
    """Delete one of your webhook endpoints, and its deliveries with it."""
    await service.delete_endpoint(session, principal, webhook_id)
    return Response(status_code=204)


@router.post("/webhooks/{webhook_id}/rotate-secret", response_model=SecretRotated)
async def rotate_webhook_secret(
    webhook_id: uuid.UUID, principal: CurrentPrincipal, session: WriteSession, c: ContainerDep
) -> SecretRotated:
    """A new secret, shown once. The old one stays valid for 24 h: meanwhile every message
    carries both signatures (`webhook-signature: v1,<new> v1,<old>`)."""
    endpoint, secret = await service.rotate_secret(session, c.events, principal, webhook_id)
    assert endpoint.previous_secret_expires_at is not None
    return SecretRotated(
        id=endpoint.id,
        secret=secret,
        previous_secret_expires_at=endpoint.previous_secret_expires_at,
    )


@router.get("/webhooks/{webhook_id}/deliveries", response_model=Page[DeliveryRead])
async def list_webhook_deliveries(
    webhook_id: uuid.UUID, principal: CurrentPrincipal, session: ReadSession, page: PageParamsDep
) -> Page[DeliveryRead]:
    """Deliveries of this endpoint, newest first, each with its attempts."""
    rows, attempts = await service.list_deliveries(
        session, principal, webhook_id, page.limit, page.cursor
    )
    items = [_delivery(d, t, attempts.get(d.id, [])) for d, t in rows]
    return make_page(items, [d for d, _ in rows], page.limit)


@router.post(
    "/webhooks/deliveries/{delivery_id}/redeliver", status_code=202, response_model=DeliveryRead
)
async def redeliver(
    delivery_id: uuid.UUID, principal: CurrentPrincipal, session: WriteSession, c: ContainerDep
) -> DeliveryRead:
    """Queue the same event to the same endpoint again, with the same `webhook-id`."""
    row, event_type = await service.redeliver(session, c.events, principal, delivery_id)
    return _delivery(row, event_type, [])


# -- the event stream


def _types(raw: list[str] | None) -> list[str] | None:
    if not raw:
        return None
    flat = [t.strip() for part in raw for t in part.split(",") if t.strip()]
    return service.check_types(flat, field="types") if flat else None


def _cursor(after: int | None, last_event_id: str | None) -> int:
    """Where a stream starts: after ``Last-Event-ID`` when a reconnecting client sends it (an
    EventSource keeps its URL, ``?after=`` included, and adds the header), else after
    ``after``, else from the start."""
    if last_event_id:
        try:
            seq: int | None = int(last_event_id)
        except ValueError:
            seq = None
        if seq is None or not 0 <= seq <= BIGINT_MAX:
            raise InvalidInput("Last-Event-ID", "must be the id of an event read before")
        return seq
    return 0 if after is None else after


def _event_read(ev: Event) -> EventRead:
    return EventRead(seq=ev.seq, id=ev.id, type=ev.type, created_at=ev.created_at, data=ev.data)


async def _read_batch(
    c: Container, principal: Principal, after: int, types: list[str] | None, limit: int
) -> list[Event]:
    # A short read of its own: no connection is held while waiting.
    async with c.db.read_session() as s:
        return await service.read_events(
            s, c.events, principal, after=after, types=types, limit=limit
        )


async def _wait(c: Container, principal: Principal, timeout: float) -> None:
    """Sleep until an event of this reader commits or ``timeout``; once woken, give the new
    event the visibility lag before the re-read."""
    address = None if principal.is_admin else principal.address
    woken = await c.event_hub.wait(address, timeout)
    if woken and c.settings.events_visibility_lag_seconds > 0:
        await asyncio.sleep(min(c.settings.events_visibility_lag_seconds, timeout))


@router.get(
    "/events",
    response_model=EventsRead,
    responses={
        200: {"content": {"text/event-stream": {}}},
        204: {"description": "The server is shutting down; retry after Retry-After"},
    },
)
async def read_events(
    request: Request,
    principal: CurrentPrincipal,
    c: ContainerDep,
    after: Annotated[
        int | None, Query(ge=0, le=BIGINT_MAX, description="next_after (or seq) read before")
    ] = None,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0,
    types: Annotated[list[str] | None, Query(description="Event types (repeat or commas)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Any:
    """Your events (everyone's, for an operator) after `after`, oldest first: the same
    envelopes webhooks carry, plus `seq`. Long-polls up to `wait` seconds (30 max). With
    `Accept: text/event-stream` it streams instead (`id: <seq>`, `event: <type>`,
    `data: <envelope>`) until the server shuts down or 30 minutes pass, then sends an `end`
    event; reconnect with `Last-Event-ID`. Events appear after a short visibility lag
    (EVENTS_VISIBILITY_LAG_SECONDS)."""
    wanted = _types(types)
    cursor = _cursor(after, last_event_id)
    if accept and "text/event-stream" in accept:
        return StreamingResponse(
            _stream(c, principal, StreamAuth(request), cursor, wanted, limit),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    if c.draining:
        return Response(status_code=204, headers={"Retry-After": "5"})
    deadline = time.monotonic() + wait
    while True:
        rows = await _read_batch(c, principal, cursor, wanted, limit)
        remaining = deadline - time.monotonic()
        if rows or c.draining or remaining <= 0:
            break
        await _wait(c, principal, min(remaining, c.settings.long_poll_recheck_seconds))
    return EventsRead(
        items=[_event_read(r) for r in rows], next_after=rows[-1].seq if rows else cursor
    )


def _frame(event: str, data: dict[str, Any], id_: int | None = None) -> bytes:
    head = f"id: {id_}\n" if id_ is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _stream(
    c: Container,
    principal: Principal,
    auth: StreamAuth,
    cursor: int,
    types: list[str] | None,
    limit: int,
) -> AsyncIterator[bytes]:
    started = c.clock.monotonic()
    quiet_since = time.monotonic()
    yield b"retry: 2000\n\n"
    while True:
        if c.draining:
            yield _frame("end", {"reason": "shutdown", "next_after": cursor})
            return
        if await auth.revoked():
            yield _frame("end", {"reason": "unauthenticated", "next_after": cursor})
            return
        if c.clock.monotonic() - started >= STREAM_MAX_SECONDS:
            yield _frame("end", {"reason": "timeout", "next_after": cursor})
            return
        rows = await _read_batch(c, principal, cursor, types, limit)
        for ev in rows:
            cursor = ev.seq
            yield _frame(ev.type, service.envelope(ev), ev.seq)
        if rows:
            quiet_since = time.monotonic()
            if len(rows) == limit:
                continue
        elif time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        await _wait(c, principal, c.settings.long_poll_recheck_seconds)
