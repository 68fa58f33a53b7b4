"""The task state table is the one path: the queue's edges cover exactly the table's
transitions, and no module but ``tasks.queue.transitions`` assigns a task's status."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from parity.core.tasks.states import TASK_TRANSITIONS, InvalidTransition, TaskStatus
from parity.tasks.queue import transitions as tr

SRC = Path(__file__).resolve().parents[2] / "src" / "parity"
OWNER = SRC / "tasks" / "queue" / "transitions.py"


def _edge_pairs() -> set[tuple[TaskStatus, TaskStatus]]:
    pairs = set()
    for edge in tr.EDGES:
        for source in edge.sources:
            pairs.update(edge.path(source))
    return pairs


def test_the_edges_are_exactly_the_transitions_of_the_state_table():
    table = {(a, b) for a, targets in TASK_TRANSITIONS.items() for b in targets}
    assert _edge_pairs() == table


def test_an_edge_the_table_forbids_is_refused_when_defined():
    with pytest.raises(InvalidTransition):
        tr._edge("reopen", frozenset({TaskStatus.COMPLETED}), TaskStatus.PENDING, sets={})


def test_the_statement_values_set_the_target_status_and_every_column_of_the_edge():
    from parity.tasks.queue.statements import TASKS

    for edge in tr.EDGES:
        values = tr.values(edge, TASKS)
        assert set(values) == {"status", *edge.sets}
        assert str(values["status"]) == f"'{edge.target.value}'"


def _status_writes(path: Path) -> list[str]:
    """Assignments to ``<x>.status`` and ``status=`` keywords outside a ``Task(...)`` built
    in the initial status."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and t.attr == "status":
                found.append(f"{path.name}:{node.lineno} assigns {ast.unparse(t)}")
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                func = ast.unparse(node.func)
                if kw.arg != "status" or not (func == "Task" or func.endswith(".values")):
                    continue  # a read model's status field, not a row's
                if func == "Task" and "INITIAL" in ast.unparse(kw.value):
                    continue
                found.append(f"{path.name}:{node.lineno} passes status= to {func}")
            if isinstance(node.func, ast.Attribute) and node.func.attr == "values":
                for arg in node.args:
                    if isinstance(arg, ast.Dict) and any(
                        isinstance(k, ast.Constant) and k.value == "status" for k in arg.keys
                    ):
                        found.append(f"{path.name}:{node.lineno} sets status in values()")
    return found


def test_no_module_of_the_task_domain_changes_a_status_outside_the_transitions():
    offenders = []
    for path in sorted((SRC / "tasks").rglob("*.py")):
        if path != OWNER:
            offenders += _status_writes(path)
    assert offenders == []


def test_no_other_module_writes_a_task_row():
    """Outside the task domain nothing imports the task models to write them (the registry of
    models and the migrations aside)."""
    allowed = {SRC / "db" / "registry.py"}
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if (SRC / "tasks") in path.parents or path in allowed or "migrations" in path.parts:
            continue
        if "parity.tasks.models" in path.read_text() or "tasks import models" in path.read_text():
            offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


def test_the_guard_finds_every_kind_of_status_write(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(task, q, Task):\n"
        "    task.status = 'failed'\n"
        "    q.values(status='failed')\n"
        "    q.values({'status': 'failed'})\n"
        "    Task(status='running')\n"
    )
    assert _status_writes(sample) == [
        "sample.py:2 assigns task.status",
        "sample.py:3 passes status= to q.values",
        "sample.py:4 sets status in values()",
        "sample.py:5 passes status= to Task",
    ]
