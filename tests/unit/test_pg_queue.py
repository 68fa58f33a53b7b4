"""The PostgreSQL hot statements spell the core's status and type strings out: keep them equal."""

from __future__ import annotations

import re

from parity.core.tasks.states import ACTIVE, TaskStatus, TaskType
from parity.tasks import pg_queue
from parity.tasks.pg_queue import RecordView

STATEMENTS = {
    "CANDIDATES": pg_queue.CANDIDATES,
    "MARK_CLAIMED": pg_queue.MARK_CLAIMED,
    "START_HELD": pg_queue.START_HELD,
    "COMPLETE_HELD": pg_queue.COMPLETE_HELD,
}
KNOWN = {s.value for s in TaskStatus} | {t.value for t in TaskType} | {"online"}
# Quoted strings that are not statuses: the task.completed event's type and its data's keys.
EVENT_WORDS = {"task.completed", "task_id", "status", "title", "attempts"}


def test_every_quoted_status_or_type_is_one_the_core_defines():
    for name, sql in STATEMENTS.items():
        quoted = set(re.findall(r"'([a-z_.]+)'", sql)) - EVENT_WORDS
        assert quoted, name
        unknown = quoted - KNOWN
        assert not unknown, f"{name} quotes strings the core does not define: {unknown}"


def test_active_sets_are_the_cores_active_statuses():
    active = ", ".join(f"'{s}'" for s in sorted(s.value for s in ACTIVE))
    assert f"status IN ({active})" in pg_queue.CANDIDATES
    assert f"status IN ({active})" in pg_queue.COMPLETE_HELD


def test_movable_types_are_the_types_an_expired_offer_frees():
    from parity.tasks.repository import MOVABLE_TYPES

    movable = ", ".join(f"'{t}'" for t in MOVABLE_TYPES)
    assert f"type IN ({movable})" in pg_queue.CANDIDATES
    assert f"type IN ({movable})" in pg_queue.COMPLETE_HELD


def test_a_record_view_reads_columns_as_attributes():
    view = RecordView({"id": 1, "status": "pending"})
    assert view.id == 1 and view.status == "pending"
    assert list(view) == [1, "pending"]
    try:
        _ = view.missing
    except AttributeError as exc:
        assert "missing" in str(exc)
    else:  # pragma: no cover - the assertion below is the failure
        raise AssertionError("an unknown column must raise AttributeError")
