"""The task transition table (ARCHITECTURE §5) and the status enums."""

from __future__ import annotations

import itertools

import pytest

from parity.core.tasks.states import (
    ACTIVE,
    TASK_TRANSITIONS,
    TERMINAL,
    InvalidTransition,
    ReportedRunnerStatus,
    RunnerStatus,
    TaskStatus,
    TaskType,
    can_transition,
    check_transition,
)

S = TaskStatus

# Every allowed edge, with the reason it exists. The table must equal exactly this set.
ALLOWED = [
    pytest.param(S.PENDING, S.ASSIGNED, id="pending->assigned:claimed"),
    pytest.param(S.PENDING, S.CANCELLED, id="pending->cancelled:cancel-before-claim"),
    pytest.param(S.ASSIGNED, S.RUNNING, id="assigned->running:started"),
    pytest.param(S.ASSIGNED, S.COMPLETED, id="assigned->completed:implicit-start"),
    pytest.param(S.ASSIGNED, S.FAILED, id="assigned->failed:implicit-start-final-fail"),
    pytest.param(S.ASSIGNED, S.PENDING, id="assigned->pending:lease-expired-attempts-left"),
    pytest.param(S.ASSIGNED, S.CANCELLED, id="assigned->cancelled:cancel-before-start"),
    pytest.param(S.RUNNING, S.COMPLETED, id="running->completed"),
    pytest.param(S.RUNNING, S.FAILED, id="running->failed:no-attempts-left"),
    pytest.param(S.RUNNING, S.PENDING, id="running->pending:retry"),
    pytest.param(S.RUNNING, S.CANCEL_REQUESTED, id="running->cancel_requested"),
    pytest.param(S.CANCEL_REQUESTED, S.CANCELLED, id="cancel_requested->cancelled:ack-or-expiry"),
    pytest.param(S.CANCEL_REQUESTED, S.COMPLETED, id="cancel_requested->completed:won-race"),
]

DISALLOWED = [
    pytest.param(S.RUNNING, S.ASSIGNED, id="running-cannot-return-to-assigned"),
    pytest.param(S.PENDING, S.RUNNING, id="pending-cannot-start-without-claim"),
    pytest.param(S.PENDING, S.COMPLETED, id="pending-cannot-complete"),
    pytest.param(S.PENDING, S.FAILED, id="pending-cannot-fail"),
    pytest.param(S.PENDING, S.CANCEL_REQUESTED, id="pending-cancels-directly"),
    pytest.param(S.ASSIGNED, S.CANCEL_REQUESTED, id="assigned-cancels-directly"),
    pytest.param(S.RUNNING, S.CANCELLED, id="running-needs-cancel-request-first"),
    pytest.param(S.CANCEL_REQUESTED, S.PENDING, id="cancel_requested-never-retried"),
    pytest.param(S.CANCEL_REQUESTED, S.RUNNING, id="cancel_requested-cannot-resume"),
    pytest.param(S.CANCEL_REQUESTED, S.FAILED, id="cancel_requested-fail-is-cancel-ack"),
    pytest.param(S.COMPLETED, S.PENDING, id="completed-is-terminal"),
    pytest.param(S.COMPLETED, S.FAILED, id="completed-cannot-become-failed"),
    pytest.param(S.FAILED, S.PENDING, id="failed-is-terminal"),
    pytest.param(S.FAILED, S.COMPLETED, id="failed-cannot-become-completed"),
    pytest.param(S.CANCELLED, S.PENDING, id="cancelled-is-terminal"),
    pytest.param(S.CANCELLED, S.COMPLETED, id="cancelled-cannot-complete"),
    pytest.param(S.RUNNING, S.RUNNING, id="no-self-transition-running"),
    pytest.param(S.PENDING, S.PENDING, id="no-self-transition-pending"),
]


@pytest.mark.parametrize(("from_status", "to_status"), ALLOWED)
def test_allowed_transition_is_accepted(from_status: TaskStatus, to_status: TaskStatus) -> None:
    assert can_transition(from_status, to_status) is True
    check_transition(from_status, to_status)  # does not raise


@pytest.mark.parametrize(("from_status", "to_status"), DISALLOWED)
def test_disallowed_transition_is_refused(from_status: TaskStatus, to_status: TaskStatus) -> None:
    assert can_transition(from_status, to_status) is False
    with pytest.raises(InvalidTransition) as excinfo:
        check_transition(from_status, to_status)
    assert excinfo.value.from_status is from_status
    assert excinfo.value.to_status is to_status


def test_transition_table_has_exactly_the_listed_edges() -> None:
    table_edges = {(a, b) for a, targets in TASK_TRANSITIONS.items() for b in targets}
    listed = {tuple(p.values) for p in ALLOWED}
    assert table_edges == listed
    assert len(table_edges) == 13


def test_every_status_has_a_row_in_the_table() -> None:
    assert set(TASK_TRANSITIONS) == set(TaskStatus)


def test_can_transition_agrees_with_table_for_every_pair() -> None:
    for a, b in itertools.product(TaskStatus, repeat=2):
        assert can_transition(a, b) is (b in TASK_TRANSITIONS[a])


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_terminal_status_has_no_way_out(status: TaskStatus) -> None:
    assert TASK_TRANSITIONS[status] == frozenset()
    assert not any(can_transition(status, other) for other in TaskStatus)


def test_terminal_and_active_sets() -> None:
    assert frozenset({S.COMPLETED, S.FAILED, S.CANCELLED}) == TERMINAL
    assert frozenset({S.ASSIGNED, S.RUNNING, S.CANCEL_REQUESTED}) == ACTIVE
    assert not TERMINAL & ACTIVE
    assert set(TaskStatus) - TERMINAL - ACTIVE == {S.PENDING}


def test_transition_table_cannot_be_mutated() -> None:
    with pytest.raises(TypeError):
        TASK_TRANSITIONS[S.COMPLETED] = frozenset({S.PENDING})  # type: ignore[index]


def test_invalid_transition_message_names_both_statuses() -> None:
    error = InvalidTransition(S.RUNNING, S.ASSIGNED)
    assert str(error) == "task cannot move from 'running' to 'assigned'"
    assert isinstance(error, Exception)


def test_task_status_values_are_the_wire_strings() -> None:
    assert [s.value for s in TaskStatus] == [
        "pending",
        "assigned",
        "running",
        "completed",
        "failed",
        "cancelled",
        "cancel_requested",
    ]
    assert TaskStatus("cancel_requested") is S.CANCEL_REQUESTED
    assert isinstance(S.RUNNING, str)
    assert f"{S.RUNNING}" == "running"


def test_task_type_values_are_the_wire_strings() -> None:
    assert [t.value for t in TaskType] == ["command", "docker", "llm", "fl_train"]


def test_runner_status_includes_server_derived_busy() -> None:
    assert [s.value for s in RunnerStatus] == ["online", "busy", "draining", "offline"]


def test_runner_cannot_report_busy() -> None:
    assert [s.value for s in ReportedRunnerStatus] == ["online", "draining", "offline"]
    with pytest.raises(ValueError, match="busy"):
        ReportedRunnerStatus("busy")
