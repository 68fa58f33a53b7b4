"""Session events: what a session's creator (and operators) hear about it, on the events
stream and their webhooks, written in the transaction of the change (the outbox)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parity.events import service as events_service
from parity.fl.deps import FLDeps
from parity.fl.models import FLSession

SESSION_STARTED = "fl.session.started"
ROUND_COMPLETED = "fl.round.completed"
SESSION_COMPLETED = "fl.session.completed"
SESSION_FAILED = "fl.session.failed"
SESSION_EVENTS = frozenset({SESSION_STARTED, ROUND_COMPLETED, SESSION_COMPLETED, SESSION_FAILED})


def session_event_data(fl_session: FLSession, **extra: Any) -> dict[str, Any]:
    """The data of every session event: id, name, status, round progress, plus the event's
    own facts (a round's number and metrics, a failure's reason)."""
    return {
        "session_id": str(fl_session.id),
        "name": fl_session.name,
        "status": fl_session.status,
        "current_round": fl_session.current_round,
        "total_rounds": fl_session.total_rounds,
        **extra,
    }


async def emit_session_event(
    session: AsyncSession, deps: FLDeps, event_type: str, fl_session: FLSession, **data: Any
) -> None:
    """Record ``event_type`` for the session's creator in the caller's transaction. ``data``
    must be JSON-serialisable (strings, numbers, lists, dicts)."""
    if event_type not in SESSION_EVENTS:
        raise ValueError(f"not a session event: {event_type!r}")
    await events_service.emit(
        session,
        deps.tasks.events,
        event_type,
        fl_session.creator_address,
        session_event_data(fl_session, **data),
        str(fl_session.id),
    )
