"""Task and runner statuses, and the one transition table for tasks (ARCHITECTURE §5).

Every task status change in the server goes through :func:`check_transition`; the table
below is the only place that says which changes exist.

Decisions beyond the §5 diagram (each a row in :data:`TASK_TRANSITIONS`):

- ``assigned → completed`` and ``assigned → failed``: ``complete`` (and ``fail``) are allowed
  from ``assigned`` — an implicit start (§4, Fencing).
- ``cancel_requested → completed``: a completion that arrives after a cancel was requested but
  before the runner saw it is still accepted as ``completed``. The work was done and its result
  exists, so it is kept and billed (one accepted completion, one ledger posting); the cancel
  request simply lost the race.
- ``cancel_requested → cancelled``: the runner acknowledged the cancel, or its lease expired.
  A ``fail`` report while ``cancel_requested`` is not a separate edge: the client asked to stop,
  so the service records it as that acknowledgement (``cancelled``), never ``failed`` and never
  a retry.
- ``cancel_requested → pending`` does not exist: a task whose cancel was requested is never
  retried, not even when its lease expires.
- A status never transitions to itself; repeating a transition with the same claim token is
  answered by the service (idempotent 200), not by this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "ACTIVE",
    "TASK_TRANSITIONS",
    "TERMINAL",
    "InvalidTransition",
    "ReportedRunnerStatus",
    "RunnerStatus",
    "TaskStatus",
    "TaskType",
    "can_transition",
    "check_transition",
]


class TaskStatus(StrEnum):
    """Status of a task row; the strings are those the original API returned, plus new ones."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCEL_REQUESTED = "cancel_requested"


class TaskType(StrEnum):
    """Kind of runner work; every kind lives in the one task queue (§4, Work items)."""

    COMMAND = "command"
    DOCKER = "docker"
    LLM = "llm"
    FL_TRAIN = "fl_train"


class RunnerStatus(StrEnum):
    """Runner status as the server stores it; ``busy`` is derived by the server, never reported."""

    ONLINE = "online"
    BUSY = "busy"
    DRAINING = "draining"
    OFFLINE = "offline"


class ReportedRunnerStatus(StrEnum):
    """The statuses a runner may report in its heartbeat; ``offline`` releases its claims."""

    ONLINE = "online"
    DRAINING = "draining"
    OFFLINE = "offline"


_S = TaskStatus

TASK_TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = MappingProxyType(
    {
        # claimed by a runner; cancelled before anyone claimed it
        _S.PENDING: frozenset({_S.ASSIGNED, _S.CANCELLED}),
        # started; implicit start on complete/fail; lease expired with attempts left or
        # retry after fail; cancelled before it started
        _S.ASSIGNED: frozenset({_S.RUNNING, _S.COMPLETED, _S.FAILED, _S.PENDING, _S.CANCELLED}),
        # finished; lease expired or retry after fail; cancel delivered through lease/heartbeat
        _S.RUNNING: frozenset({_S.COMPLETED, _S.FAILED, _S.PENDING, _S.CANCEL_REQUESTED}),
        # runner acknowledged or lease expired; a completion that won the race is kept
        _S.CANCEL_REQUESTED: frozenset({_S.CANCELLED, _S.COMPLETED}),
        _S.COMPLETED: frozenset(),
        _S.FAILED: frozenset(),
        _S.CANCELLED: frozenset(),
    }
)
"""Allowed task transitions: ``from → {to, ...}``. Terminal statuses map to the empty set."""

TERMINAL: frozenset[TaskStatus] = frozenset({_S.COMPLETED, _S.FAILED, _S.CANCELLED})
"""Statuses a task never leaves."""

ACTIVE: frozenset[TaskStatus] = frozenset({_S.ASSIGNED, _S.RUNNING, _S.CANCEL_REQUESTED})
"""Statuses in which a runner holds a claim (a lease) on the task."""


class InvalidTransition(Exception):
    """A task status change that :data:`TASK_TRANSITIONS` does not allow."""

    def __init__(self, from_status: TaskStatus, to_status: TaskStatus) -> None:
        self.from_status = from_status
        self.to_status = to_status
        super().__init__(f"task cannot move from {from_status.value!r} to {to_status.value!r}")


def can_transition(from_status: TaskStatus, to_status: TaskStatus) -> bool:
    """True when ``to_status ∈ TASK_TRANSITIONS[from_status]``."""
    return to_status in TASK_TRANSITIONS[from_status]


def check_transition(from_status: TaskStatus, to_status: TaskStatus) -> None:
    """Raise :class:`InvalidTransition` unless :func:`can_transition` allows the change."""
    if not can_transition(from_status, to_status):
        raise InvalidTransition(from_status, to_status)
