"""All SQL of events, webhook endpoints and deliveries."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import String, Table, bindparam, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.pagination import Cursor, newest_first
from parity.events import fanout
from parity.events.models import Event, WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


def _rowcount(res: Any) -> int:
    return int(getattr(res, "rowcount", 0) or 0)


# -- events


_INSERT_EVENT = insert(cast(Table, Event.__table__))


async def add_event(session: AsyncSession, event: Event) -> None:
    """One INSERT statement; the object stays detached (no unit-of-work flush: an event is
    written on every task transition, and the ORM's flush costs more than the statement)."""
    await add_events(session, [event])


async def add_events(session: AsyncSession, events: Sequence[Event]) -> None:
    """Insert in one executemany, in order (``seq`` follows it); the objects stay detached."""
    cols = ("id", "type", "owner_address", "resource_id", "data", "created_at")
    rows = [{c: getattr(e, c) for c in cols} for e in events]
    # The table, not the mapped class: a plain INSERT, without the ORM's bulk-insert path.
    if len(rows) == 1:
        await session.execute(_INSERT_EVENT, rows[0])
    else:
        await session.execute(_INSERT_EVENT, rows)


async def any_endpoint(session: AsyncSession, owners: Sequence[str]) -> bool:
    """Whether any of these addresses has an enabled webhook endpoint."""
    q = (
        select(WebhookEndpoint.id)
        .where(WebhookEndpoint.owner_address.in_(owners), WebhookEndpoint.enabled.is_(True))
        .limit(1)
    )
    return (await session.execute(q)).first() is not None


_FAN_OUT: dict[bool, Any] = {}


def _fan_out_statement(postgres: bool) -> Any:
    stmt = _FAN_OUT.get(postgres)
    if stmt is None:
        stmt = _FAN_OUT[postgres] = fanout.deliveries(
            bindparam("b_event_id", type_=Event.__table__.c.id.type),
            bindparam("b_owner", type_=String(42)),
            bindparam("b_type", type_=String(40)),
            bindparam("b_now", type_=Event.__table__.c.created_at.type),
            postgres=postgres,
        )
    return stmt


async def fan_out(session: AsyncSession, event: Event, admins: Sequence[str]) -> int:
    """Queue the event's deliveries (see ``events.fanout``); how many were queued."""
    postgres = session.get_bind().dialect.name == "postgresql"
    params = {
        "b_event_id": event.id,
        "b_owner": event.owner_address,
        "b_type": event.type,
        "b_now": event.created_at,
        "b_admins": list(admins),
    }
    return len((await session.execute(_fan_out_statement(postgres), params)).all())


async def get_event(session: AsyncSession, event_id: uuid.UUID) -> Event | None:
    return await session.scalar(select(Event).where(Event.id == event_id))


async def events_after(
    session: AsyncSession,
    *,
    owner: str | None,
    after: int,
    visible_before: datetime,
    types: Sequence[str] | None,
    limit: int,
) -> list[Event]:
    """Events past the cursor, oldest first, that are older than ``visible_before`` (so a
    lower ``seq`` still committing is not skipped). ``owner`` None reads everyone's."""
    q = select(Event).where(Event.seq > after, Event.created_at <= visible_before)
    if owner is not None:
        q = q.where(Event.owner_address == owner)
    if types:
        q = q.where(Event.type.in_(list(types)))
    q = q.order_by(Event.seq).limit(limit)
    return list((await session.scalars(q)).all())


# -- endpoints


async def add_endpoint(session: AsyncSession, endpoint: WebhookEndpoint) -> None:
    session.add(endpoint)
    await session.flush()


async def get_endpoint(
    session: AsyncSession, endpoint_id: uuid.UUID, *, lock: bool = False
) -> WebhookEndpoint | None:
    q = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if lock:
        q = q.with_for_update()
    return await session.scalar(q)


async def count_endpoints(session: AsyncSession, owner: str) -> int:
    q = select(func.count()).select_from(WebhookEndpoint)
    return int(await session.scalar(q.where(WebhookEndpoint.owner_address == owner)) or 0)


async def list_endpoints(
    session: AsyncSession, owner: str | None, limit: int, after: Cursor | None
) -> list[WebhookEndpoint]:
    q = select(WebhookEndpoint)
    if owner is not None:
        q = q.where(WebhookEndpoint.owner_address == owner)
    q = newest_first(q, WebhookEndpoint.created_at, WebhookEndpoint.id, after, limit)
    return list((await session.scalars(q)).all())


async def delete_endpoint(session: AsyncSession, endpoint: WebhookEndpoint) -> None:
    await session.delete(endpoint)
    await session.flush()


# -- deliveries


async def add_deliveries(session: AsyncSession, rows: Sequence[WebhookDelivery]) -> None:
    session.add_all(rows)
    await session.flush()


async def get_delivery(session: AsyncSession, delivery_id: uuid.UUID) -> WebhookDelivery | None:
    return await session.get(WebhookDelivery, delivery_id)


async def list_deliveries(
    session: AsyncSession, endpoint_id: uuid.UUID, limit: int, after: Cursor | None
) -> list[tuple[WebhookDelivery, str]]:
    """A page of an endpoint's deliveries with their event types, newest first."""
    q = (
        select(WebhookDelivery, Event.type)
        .join(Event, Event.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
    )
    q = newest_first(q, WebhookDelivery.created_at, WebhookDelivery.id, after, limit)
    return [(d, t) for d, t in (await session.execute(q)).all()]


async def attempts_of(
    session: AsyncSession, delivery_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[WebhookDeliveryAttempt]]:
    out: dict[uuid.UUID, list[WebhookDeliveryAttempt]] = {d: [] for d in delivery_ids}
    if not delivery_ids:
        return out
    q = (
        select(WebhookDeliveryAttempt)
        .where(WebhookDeliveryAttempt.delivery_id.in_(list(delivery_ids)))
        .order_by(WebhookDeliveryAttempt.delivery_id, WebhookDeliveryAttempt.attempt)
    )
    for row in (await session.scalars(q)).all():
        out[row.delivery_id].append(row)
    return out


async def due(
    session: AsyncSession,
    now: datetime,
    limit: int,
    per_endpoint: int,
    exclude: Collection[uuid.UUID] = (),
) -> list[tuple[WebhookDelivery, WebhookEndpoint, Event]]:
    """Pending deliveries whose time has come on enabled endpoints that are not backing off,
    at most ``per_endpoint`` per endpoint (so one endpoint's backlog cannot fill the batch),
    oldest due first."""
    rank = (
        func.row_number()
        .over(
            partition_by=WebhookDelivery.endpoint_id,
            order_by=(WebhookDelivery.next_attempt_at, WebhookDelivery.created_at),
        )
        .label("rank")
    )
    inner = (
        select(WebhookDelivery.id.label("id"), rank)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= now,
            WebhookEndpoint.enabled.is_(True),
            or_(
                WebhookEndpoint.next_attempt_at.is_(None),
                WebhookEndpoint.next_attempt_at <= now,
            ),
        )
    )
    if exclude:
        inner = inner.where(WebhookDelivery.id.not_in(list(exclude)))
    ranked = inner.subquery()
    q = (
        select(WebhookDelivery, WebhookEndpoint, Event)
        .join(ranked, ranked.c.id == WebhookDelivery.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .join(Event, Event.id == WebhookDelivery.event_id)
        .where(ranked.c.rank <= per_endpoint)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.created_at)
        .limit(limit)
    )
    return [(d, e, ev) for d, e, ev in (await session.execute(q)).all()]


async def claim(
    session: AsyncSession, ids: Sequence[uuid.UUID], now: datetime, until: datetime
) -> set[uuid.UUID]:
    """Push the due time of the chosen deliveries past the send, in one conditional UPDATE:
    a second loop (another replica) that read the same rows gets nothing back for them."""
    if not ids:
        return set()
    res = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id.in_(list(ids)),
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=until)
        .returning(WebhookDelivery.id)
        .execution_options(synchronize_session=False)
    )
    return {row[0] for row in res.all()}


async def hold_endpoints(
    session: AsyncSession, ids: Sequence[uuid.UUID], now: datetime, until: datetime
) -> set[uuid.UUID]:
    """Claim the next try of failing endpoints: push their ``next_attempt_at`` past the send,
    in one conditional UPDATE, so that only one delivery (of one loop, on one replica) tries a
    failing endpoint at a time. Returns the endpoints held."""
    if not ids:
        return set()
    res = await session.execute(
        update(WebhookEndpoint)
        .where(
            WebhookEndpoint.id.in_(list(ids)),
            WebhookEndpoint.enabled.is_(True),
            WebhookEndpoint.consecutive_failures > 0,
            or_(
                WebhookEndpoint.next_attempt_at.is_(None),
                WebhookEndpoint.next_attempt_at <= now,
            ),
        )
        .values(next_attempt_at=until)
        .returning(WebhookEndpoint.id)
        .execution_options(synchronize_session=False)
    )
    return {row[0] for row in res.all()}


async def existing_deliveries(session: AsyncSession, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    q = select(WebhookDelivery.id).where(WebhookDelivery.id.in_(list(ids)))
    return set((await session.scalars(q)).all())


async def add_attempt(session: AsyncSession, attempt: WebhookDeliveryAttempt) -> None:
    session.add(attempt)


async def update_delivery(
    session: AsyncSession, delivery_id: uuid.UUID, values: dict[str, Any]
) -> None:
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


async def endpoint_succeeded(session: AsyncSession, endpoint_id: uuid.UUID) -> None:
    """A delivery got through: the endpoint is healthy again (no count, no back-off)."""
    await session.execute(
        update(WebhookEndpoint)
        .where(
            WebhookEndpoint.id == endpoint_id,
            or_(
                WebhookEndpoint.consecutive_failures != 0,
                WebhookEndpoint.failing_since.is_not(None),
                WebhookEndpoint.next_attempt_at.is_not(None),
            ),
        )
        .values(consecutive_failures=0, failing_since=None, next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )


async def endpoint_failed(
    session: AsyncSession, endpoint_id: uuid.UUID, now: datetime
) -> tuple[int, datetime] | None:
    """Count a failed attempt (in SQL, so concurrent recorders add up) and note when the
    failing began. Returns the failures since the last success and that start; None when the
    endpoint is gone."""
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.failing_since.is_(None))
        .values(failing_since=now)
        .execution_options(synchronize_session=False)
    )
    res = await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .values(consecutive_failures=WebhookEndpoint.consecutive_failures + 1)
        .returning(WebhookEndpoint.consecutive_failures, WebhookEndpoint.failing_since)
        .execution_options(synchronize_session=False)
    )
    row = res.first()
    if row is None:
        return None
    failures, since = row
    return int(failures), since or now


async def endpoint_back_off(session: AsyncSession, endpoint_id: uuid.UUID, until: datetime) -> None:
    """Try the failing endpoint again no sooner than ``until``."""
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.consecutive_failures > 0)
        .values(next_attempt_at=until)
        .execution_options(synchronize_session=False)
    )


async def endpoint_try_now(session: AsyncSession, endpoint_id: uuid.UUID) -> None:
    """End a failing endpoint's back-off (its failure count stays)."""
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.next_attempt_at.is_not(None))
        .values(next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )


async def disable_endpoint(
    session: AsyncSession, endpoint_id: uuid.UUID, now: datetime, reason: str
) -> bool:
    """Trip the breaker. True when this call disabled the endpoint (it was enabled)."""
    res = await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason, disabled_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(res) > 0


async def earliest_pending_due(session: AsyncSession, endpoint_id: uuid.UUID) -> datetime | None:
    """The earliest due time among the endpoint's pending deliveries (None when none)."""
    q = select(func.min(WebhookDelivery.next_attempt_at)).where(
        WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == PENDING
    )
    value: datetime | None = (await session.execute(q)).scalar_one_or_none()
    return value


async def deliveries_due_now(session: AsyncSession, endpoint_id: uuid.UUID, now: datetime) -> int:
    """Make every pending delivery of the endpoint due now (it was just re-enabled)."""
    res = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at > now,
        )
        .values(next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(res)
