"""The one transition path of a task row (ARCHITECTURE §5).

Every status change of a task is an :class:`Edge`: the statuses it leaves, the status it
reaches (checked against ``core.tasks.states``), and the columns it sets, written once as
symbols. The same edge is applied two ways:

- :func:`transition` to a loaded ``Task`` (the general path: SQLite, repeats, timers, cancels);
- :func:`values` / :func:`sources` as SQLAlchemy Core for the queue's single statements
  (``queue.statements``), which the PostgreSQL fast path compiles for the driver.

After a row has changed, :func:`settle` does what follows from the status it reached: the
task event (or, for an edge without one that ``wakes``, a wake-up of the task's watchers), and
closing the escrow when the status is terminal (never keyed by an event name).
No other module assigns a task's ``status`` (``tests/unit/test_task_transitions.py`` checks).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, literal_column
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import (
    ACTIVE,
    TERMINAL,
    InvalidTransition,
    TaskStatus,
    check_transition,
)
from parity.db.hooks import after_commit
from parity.tasks import billing
from parity.tasks.deps import TaskDeps
from parity.tasks.events import emit_task_event
from parity.tasks.models import Task, TaskAttempt

_S = TaskStatus
INITIAL = _S.PENDING
"""The status a task is created in (creation is not a transition)."""


class Now:
    """The transition's time."""


class Null:
    """Cleared."""


class Keep:
    """Kept when set, else the transition's time (``coalesce(col, now)``)."""


class Inc:
    """Incremented by one."""


@dataclass(frozen=True)
class Param:
    """A value the caller gives (``b_<name>`` in statements)."""

    name: str


Value = type[Now] | type[Null] | type[Keep] | type[Inc] | Param

_LEASE_CLEARED: Mapping[str, Value] = {"lease_expires_at": Null, "claim_token_hash": Null}


@dataclass(frozen=True)
class Edge:
    name: str
    sources: frozenset[TaskStatus]
    target: TaskStatus
    sets: Mapping[str, Value]
    via: tuple[TaskStatus, ...] = ()  # statuses passed through (claim and start in one call)
    event: str | None = None  # the event of this edge; None: none
    outcome: str | None = None  # how the current attempt ends, when it ends here
    # An edge with no event whose watchers must still learn of it at once (the task's
    # resource watchers, here and on the other replicas): a cancel requested of a runner's
    # open token stream, a slot given back that a queued prompt waits for.
    wakes: bool = False

    def path(self, current: TaskStatus) -> list[tuple[TaskStatus, TaskStatus]]:
        steps = [current, *self.via, self.target]
        return list(itertools.pairwise(steps))


def _edge(name: str, sources: frozenset[TaskStatus], target: TaskStatus, **kw: Any) -> Edge:
    edge = Edge(name, sources, target, **kw)
    for source in sources:  # a table that forbids an edge fails at import, not at run time
        for a, b in edge.path(source):
            check_transition(a, b)
    return edge


_CLAIM_SETS: Mapping[str, Value] = {
    "runner_id": Param("runner_id"),
    "attempts": Inc,
    "claim_token_hash": Param("token_hash"),
    "lease_expires_at": Param("lease_until"),
    "offer_expires_at": Null,
    "updated_at": Now,
}
_RUNNING = frozenset({_S.ASSIGNED, _S.RUNNING})
_ACTIVE = frozenset(ACTIVE)

CLAIM = _edge("claim", frozenset({_S.PENDING}), _S.ASSIGNED, sets=_CLAIM_SETS)
CLAIM_STARTED = _edge(
    "claim_started",
    frozenset({_S.PENDING}),
    _S.RUNNING,
    sets={**_CLAIM_SETS, "started_at": Now},
    via=(_S.ASSIGNED,),
)
START = _edge(
    "start", frozenset({_S.ASSIGNED}), _S.RUNNING, sets={"started_at": Now, "updated_at": Now}
)
COMPLETE = _edge(
    "complete",
    _ACTIVE,
    _S.COMPLETED,
    sets={"started_at": Keep, "completed_at": Now, "updated_at": Now, **_LEASE_CLEARED},
    event="task.completed",
    outcome="completed",
)
RETRY = _edge(
    "retry",
    _RUNNING,
    _S.PENDING,
    sets={
        "available_at": Param("available_at"),
        "runner_id": Null,
        "target_runner_id": Null,
        "offer_expires_at": Null,
        "last_error": Param("reason"),
        "updated_at": Now,
        **_LEASE_CLEARED,
    },
    event="task.retrying",
)
FAIL = _edge(
    "fail",
    _RUNNING,
    _S.FAILED,
    sets={"completed_at": Now, "last_error": Param("reason"), "updated_at": Now, **_LEASE_CLEARED},
    event="task.failed",
)
RELEASE = _edge(
    "release",
    _RUNNING,
    _S.PENDING,
    sets={
        "available_at": Now,
        "releases": Inc,
        "runner_id": Null,
        "target_runner_id": Null,  # an offer to the runner that gave it back is void
        "offer_expires_at": Null,
        "updated_at": Now,
        **_LEASE_CLEARED,
    },
    outcome="released",
    wakes=True,
)
CANCEL = _edge(
    "cancel",
    frozenset({_S.PENDING, _S.ASSIGNED}),
    _S.CANCELLED,
    sets={"completed_at": Now, "updated_at": Now, **_LEASE_CLEARED},
    event="task.cancelled",
    outcome="cancelled",
)
REQUEST_CANCEL = _edge(
    "request_cancel",
    frozenset({_S.RUNNING}),
    _S.CANCEL_REQUESTED,
    sets={"cancel_requested_at": Now, "updated_at": Now},
    wakes=True,
)
# The runner acknowledged a requested cancel (by failing or releasing), or its lease expired.
CANCEL_ACKNOWLEDGED = _edge(
    "cancel_acknowledged",
    frozenset({_S.CANCEL_REQUESTED}),
    _S.CANCELLED,
    sets={"completed_at": Now, "updated_at": Now, **_LEASE_CLEARED},
    event="task.cancelled",
)


# -- the general path: a loaded row ---------------------------------------------------------


async def transition(
    session: AsyncSession,
    deps: TaskDeps,
    task: Task,
    edge: Edge,
    *,
    now: datetime,
    attempt: TaskAttempt | None = None,
    outcome: str | None = None,
    event_data: Mapping[str, Any] | None = None,
    **params: Any,
) -> None:
    """Move a loaded, locked task along ``edge``: check the table, set the edge's columns,
    end the current attempt (``outcome`` or the edge's), then :func:`settle`."""
    current = TaskStatus(task.status)
    if current not in edge.sources:
        raise InvalidTransition(current, edge.target)
    for column, value in edge.sets.items():
        setattr(task, column, _python_value(value, getattr(task, column), now, params))
    task.status = edge.target.value
    ended = outcome or edge.outcome
    if attempt is not None and ended is not None and attempt.ended_at is None:
        attempt.started_at = attempt.started_at or task.started_at
        attempt.ended_at = now
        attempt.outcome = ended
    await session.flush()
    await settle(session, deps, task, edge, **(event_data or {}))


def _python_value(value: Value, old: Any, now: datetime, params: Mapping[str, Any]) -> Any:
    if value is Now:
        return now
    if value is Null:
        return None
    if value is Keep:
        return old if old is not None else now
    if value is Inc:
        return old + 1
    assert isinstance(value, Param)
    return params[value.name]


async def settle(
    session: AsyncSession,
    deps: TaskDeps,
    task: Any,
    edge: Edge,
    *,
    event_recorded: bool = False,
    deliveries: bool = False,
    **event_data: Any,
) -> None:
    """What follows a transition, by what it reached: its event (unless the transition's own
    statement recorded it: then only its readers are woken after commit), and the escrow
    closed when the status is terminal (billed for a completion, released otherwise)."""
    if edge.event is not None and not event_recorded:
        await emit_task_event(session, deps, edge.event, task, **event_data)
    elif event_recorded or edge.wakes:
        # Its readers (the owner's, when the statement recorded the event) and the task's
        # watchers are woken once it commits.
        hub, about = deps.events.hub, (str(task.id),)
        owners = [task.creator_address.lower()] if event_recorded else []
        notify = deliveries and event_recorded

        def wake() -> None:
            hub.publish(owners, deliveries=notify, resources=about)

        after_commit(session, wake)
    if edge.target in TERMINAL:
        await billing.close(session, deps, task)
        if edge.target != TaskStatus.COMPLETED:
            await billing.ended(session, deps, task)


# -- the statement path: Core values over the tasks table ------------------------------------


def const(value: str) -> ColumnElement[Any]:
    """A status or type string inlined in SQL (a partial index on ``status = 'pending'`` is
    used only when the planner sees the literal)."""
    return literal_column(f"'{value}'")


def one_of(column: Any, statuses: frozenset[TaskStatus] | list[str]) -> ColumnElement[bool]:
    """``column IN ('a', 'b')`` with the strings inlined, in a stable order."""
    return column.in_([const(str(s)) for s in sorted(str(x) for x in statuses)])  # type: ignore[no-any-return]


def sources(edge: Edge, status_column: Any) -> ColumnElement[bool]:
    return one_of(status_column, edge.sources)


def values(edge: Edge, table: Any) -> dict[str, Any]:
    """The edge's SET clause for an UPDATE of ``table`` (binds ``b_now`` and ``b_<param>``)."""
    now = bindparam("b_now", type_=table.c.updated_at.type)
    out: dict[str, Any] = {"status": const(edge.target.value)}
    for column, value in edge.sets.items():
        col = table.c[column]
        if value is Now:
            out[column] = now
        elif value is Null:
            out[column] = None
        elif value is Keep:
            out[column] = func.coalesce(col, now)
        elif value is Inc:
            out[column] = col + 1
        else:
            assert isinstance(value, Param)
            out[column] = bindparam(f"b_{value.name}", type_=col.type)
    return out


EDGES: tuple[Edge, ...] = (
    CLAIM,
    CLAIM_STARTED,
    START,
    COMPLETE,
    RETRY,
    FAIL,
    RELEASE,
    CANCEL,
    REQUEST_CANCEL,
    CANCEL_ACKNOWLEDGED,
)
