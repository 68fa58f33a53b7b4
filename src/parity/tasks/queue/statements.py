"""The queue's statements, defined once in SQLAlchemy Core: the runner's row lock, the claim
candidates (with the runner's usage), and the claim, start and complete of held tasks. Status
changes come from ``transitions`` (the edges' columns); the event fan-out from
``events.fanout``.

Built per dialect by :func:`for_dialect`. On PostgreSQL each claim, start and complete is one
statement (data-modifying CTEs: the attempt, the result, the event and its deliveries ride
along), which the driver path compiles for asyncpg (``queue.executors``) and the SQLAlchemy
path runs as it is. SQLite has no data-modifying CTEs: there the same UPDATE is followed by the
attempt's and the result's own statements (``Statements.single`` is False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from typing import cast as type_cast

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    exists,
    extract,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from parity.core.tasks.states import ACTIVE, TaskStatus, TaskType
from parity.events import fanout
from parity.events.models import Event
from parity.runners.models import Runner
from parity.tasks.models import Task, TaskAttempt, TaskExclusion, TaskResult
from parity.tasks.queue import transitions as tr

TASKS = type_cast(Table, Task.__table__)
ATTEMPTS = type_cast(Table, TaskAttempt.__table__)
RESULTS = type_cast(Table, TaskResult.__table__)
EVENTS = type_cast(Table, Event.__table__)
RUNNERS = type_cast(Table, Runner.__table__)
EXCLUSIONS = type_cast(Table, TaskExclusion.__table__)

MOVABLE = frozenset({TaskType.COMMAND.value, TaskType.DOCKER.value})
"""Task types whose offer falls back to anyone when it expires (prompts are re-routed, FL
tasks never move)."""
ACTIVE_STATUSES = frozenset(ACTIVE)
COMPLETED_EVENT = tr.COMPLETE.event or ""


def _b(name: str, column: Any) -> Any:
    return bindparam(name, type_=column.type)


NOW = _b("b_now", TASKS.c.updated_at)
RUNNER = _b("b_runner_id", TASKS.c.runner_id)


def _held(status_in: Any) -> list[Any]:
    """The task is in the edge's statuses under this runner's current claim token: the
    fencing test (the token's hash is on the task only while its attempt is open)."""
    return [
        TASKS.c.id == _b("b_task_id", TASKS.c.id),
        TASKS.c.claim_token_hash == _b("b_token_hash", TASKS.c.claim_token_hash),
        TASKS.c.runner_id == RUNNER,
        status_in,
    ]


def _usage_sums() -> list[Any]:
    return [
        func.count().label("used_count"),
        func.coalesce(func.sum(TASKS.c.req_cpu_cores), 0.0).label("used_cpu"),
        func.coalesce(func.sum(TASKS.c.req_memory_mb), 0).label("used_memory"),
        func.coalesce(func.sum(TASKS.c.req_gpus), 0).label("used_gpus"),
    ]


def runner_fits(runner: Any, task: Any) -> list[Any]:
    """A runner that is online, claiming, and big enough for the task (free capacity aside)."""
    return [
        runner.c.status == tr.const("online"),
        runner.c.banned_at.is_(None),
        runner.c.drain_requested.is_(False),
        runner.c.cpu_cores >= task.c.req_cpu_cores - 1e-9,
        runner.c.memory_mb >= task.c.req_memory_mb,
        runner.c.gpus >= task.c.req_gpus,
        or_(task.c.req_docker.is_(False), runner.c.docker.is_(True)),
    ]


def excluded_for(runner_id: Any, task: Any = TASKS) -> Any:
    return (
        exists()
        .where(EXCLUSIONS.c.task_id == task.c.id, EXCLUSIONS.c.runner_id == runner_id)
        .correlate_except(EXCLUSIONS)
    )


def another_runner_could(runner_id: Any, task: Any = TASKS) -> Any:
    """Some other online runner fits the task and has not failed it: a runner that failed the
    task then waits for that one (exclusion is a preference, not a ban)."""
    other = RUNNERS.alias("other")
    return (
        exists()
        .where(other.c.id != runner_id, *runner_fits(other, task), ~excluded_for(other.c.id, task))
        .correlate_except(other)
    )


def may_take(runner_id: Any, now: Any, task: Any = TASKS) -> list[Any]:
    """Pending, due, offered to this runner, or (movable types only) offered to nobody or with
    an expired offer; and not failed here unless no other runner could take it. Other types
    (prompts, FL rounds) are claimed only by the runner their routing chose."""
    return [
        task.c.status == tr.const(TaskStatus.PENDING.value),
        task.c.available_at <= now,
        or_(
            task.c.target_runner_id == runner_id,
            and_(
                or_(task.c.target_runner_id.is_(None), task.c.offer_expires_at < now),
                tr.one_of(task.c.type, sorted(MOVABLE)),
            ),
        ),
        or_(~excluded_for(runner_id, task), ~another_runner_could(runner_id, task)),
    ]


def labels_fit(postgres: bool, task: Any = TASKS) -> Any:
    """The task's required labels are all among the runner's (``b_labels``, its labels as a
    JSON object): in SQL, so tasks no runner of these labels can take never fill a claim's
    batch of candidates ahead of those it can."""
    runner_labels = bindparam("b_labels", type_=Text)
    if postgres:
        return cast(task.c.required_labels, JSONB).op("<@")(cast(runner_labels, JSONB))
    need = func.json_each(task.c.required_labels).table_valued("key", "value").alias("need")
    have = func.json_each(runner_labels).table_valued("key", "value").alias("have")
    held: Any = (
        select(literal_column("1"))
        .select_from(have)
        .where(have.c.key == need.c.key, have.c.value == need.c.value)
    )
    return ~select(literal_column("1")).select_from(need).where(~held.exists()).exists()


LOCK_RUNNER = (
    select(
        RUNNERS.c.id,
        RUNNERS.c.status,
        RUNNERS.c.drain_requested,
        RUNNERS.c.banned_at,
        RUNNERS.c.max_concurrent_tasks,
        RUNNERS.c.cpu_cores,
        RUNNERS.c.memory_mb,
        RUNNERS.c.gpus,
        RUNNERS.c.docker,
        RUNNERS.c.labels,
    )
    .where(RUNNERS.c.id == _b("b_runner_id", RUNNERS.c.id))
    .with_for_update()
)


def _candidates(by_id: bool, postgres: bool) -> Any:
    """Pending tasks this runner may claim now, best first, locked with SKIP LOCKED, each with
    the runner's active usage (a CTE read after the runner's row lock): ``used_*``."""
    usage = (
        select(*_usage_sums())
        .where(TASKS.c.runner_id == RUNNER, tr.one_of(TASKS.c.status, ACTIVE_STATUSES))
        .cte("runner_usage")
    )
    q = select(
        TASKS.c.id,
        TASKS.c.req_cpu_cores,
        TASKS.c.req_memory_mb,
        TASKS.c.req_gpus,
        TASKS.c.req_docker,
        TASKS.c.required_labels,
        usage.c.used_count,
        usage.c.used_cpu,
        usage.c.used_memory,
        usage.c.used_gpus,
    ).where(
        usage.c.used_count < bindparam("b_max", type_=Integer),
        *may_take(RUNNER, NOW),
        TASKS.c.req_cpu_cores <= bindparam("b_cpu", type_=Float) - usage.c.used_cpu + 1e-9,
        TASKS.c.req_memory_mb <= bindparam("b_memory", type_=Integer) - usage.c.used_memory,
        TASKS.c.req_gpus <= bindparam("b_gpus", type_=Integer) - usage.c.used_gpus,
        or_(TASKS.c.req_docker.is_(False), bindparam("b_docker", type_=Boolean)),
        labels_fit(postgres),
    )
    if by_id:
        q = q.where(TASKS.c.id == _b("b_task_id", TASKS.c.id))
    q = q.order_by(TASKS.c.priority.desc(), TASKS.c.available_at, TASKS.c.id)
    return q.limit(bindparam("b_limit", type_=Integer)).with_for_update(skip_locked=True, of=TASKS)


# Is there any task this runner might claim now? ``may_take`` without its exclusion rule, so
# a superset of the claim's candidates (a cheap read before a claim's write transaction).
ANY_FOR_RUNNER = select(select(TASKS.c.id).where(*may_take(RUNNER, NOW)[:3]).limit(1).exists())

# Is an untargeted task due (to offer), is a push-capable runner online (to offer it to)?
DUE_UNOFFERED = (
    select(TASKS.c.id)
    .where(
        TASKS.c.status == tr.const(TaskStatus.PENDING.value),
        TASKS.c.target_runner_id.is_(None),
        TASKS.c.available_at <= NOW,
        tr.one_of(TASKS.c.type, sorted(MOVABLE)),
    )
    .limit(1)
    .exists()
)
PUSH_RUNNER = (
    select(RUNNERS.c.id)
    .where(
        RUNNERS.c.status == tr.const("online"),
        RUNNERS.c.banned_at.is_(None),
        RUNNERS.c.webhook_url.is_not(None),
        RUNNERS.c.webhook_secret.is_not(None),
    )
    .limit(1)
    .exists()
)


@dataclass(frozen=True)
class Statements:
    """The queue's statements for one dialect."""

    single: bool  # claim/start/complete carry their attempt, result and event (PostgreSQL)
    lock_runner: Any
    candidates: Any
    candidate_by_id: Any
    claim: Any
    claim_started: Any
    start: Any
    complete: Any
    insert_attempts: Any  # SQLite: the attempts of a claim
    start_attempt: Any  # SQLite: the attempt of a start
    end_attempt: Any  # SQLite: the attempt of a completion
    insert_result: Any  # SQLite: the result of a completion


def _claim(edge: tr.Edge, postgres: bool) -> Any:
    ids = (
        TASKS.c.id == func.any(bindparam("b_ids", type_=ARRAY(TASKS.c.id.type)))
        if postgres
        else TASKS.c.id.in_(bindparam("b_ids", expanding=True))
    )
    marked = (
        update(TASKS)
        .where(ids, tr.sources(edge, TASKS.c.status))
        .values(**tr.values(edge, TASKS))
        .returning(*TASKS.c)
    )
    if not postgres:
        return marked
    claimed = marked.cte("claimed")
    started = NOW if edge.target == TaskStatus.RUNNING else literal_column("NULL")
    opened = insert(ATTEMPTS).from_select(
        ["id", "task_id", "attempt", "runner_id", "claim_token_hash", "claimed_at", "started_at"],
        select(
            func.gen_random_uuid(),
            claimed.c.id,
            claimed.c.attempts,
            claimed.c.runner_id,
            claimed.c.claim_token_hash,
            NOW,
            started,
        ),
    )
    return select(claimed).add_cte(opened.cte("opened"))


def _start(postgres: bool) -> Any:
    edge = tr.START
    started = (
        update(TASKS)
        .where(*_held(tr.sources(edge, TASKS.c.status)))
        .values(**tr.values(edge, TASKS))
        .returning(*TASKS.c)
    )
    if not postgres:
        return started
    s = started.cte("started")
    attempt = (
        update(ATTEMPTS)
        .where(ATTEMPTS.c.task_id == s.c.id, ATTEMPTS.c.attempt == s.c.attempts)
        .values(started_at=NOW)
    )
    return select(s).add_cte(attempt.cte("attempt"))


_RESULT_COLUMNS = [
    "id",
    "task_id",
    "attempt",
    "runner_id",
    "output",
    "output_cid",
    "exit_code",
    "error",
    "result_hash",
    "usage",
    "execution_seconds",
    "created_at",
]


def _complete(postgres: bool) -> Any:
    edge = tr.COMPLETE
    done = (
        update(TASKS)
        .where(*_held(tr.sources(edge, TASKS.c.status)))
        .values(**tr.values(edge, TASKS))
    )
    if not postgres:
        return done.returning(*TASKS.c, DUE_UNOFFERED.label("due"), PUSH_RUNNER.label("push"))
    d = done.returning(*TASKS.c).cte("done")
    exit_code = bindparam("b_exit_code", type_=Integer)
    ended = (
        update(ATTEMPTS)
        .where(ATTEMPTS.c.task_id == d.c.id, ATTEMPTS.c.attempt == d.c.attempts)
        .values(
            started_at=func.coalesce(ATTEMPTS.c.started_at, d.c.started_at),
            ended_at=NOW,
            outcome=tr.const(edge.outcome or ""),
            exit_code=exit_code,
        )
    )
    seconds = func.greatest(extract("epoch", NOW - d.c.started_at), 0)
    result = insert(RESULTS).from_select(
        _RESULT_COLUMNS,
        select(
            _b("b_result_id", RESULTS.c.id),
            d.c.id,
            d.c.attempts,
            RUNNER,
            _b("b_output", RESULTS.c.output),
            _b("b_output_cid", RESULTS.c.output_cid),
            exit_code,
            _b("b_error", RESULTS.c.error),
            _b("b_result_hash", RESULTS.c.result_hash),
            _b("b_usage", RESULTS.c.usage),
            seconds,
            NOW,
        ),
    )
    data = func.json_build_object(
        "task_id",
        cast(d.c.id, String),
        "status",
        d.c.status,
        "title",
        d.c.title,
        "attempts",
        d.c.attempts,
    )
    event = (
        insert(EVENTS)
        .from_select(
            ["id", "type", "owner_address", "resource_id", "data", "created_at"],
            select(
                _b("b_event_id", EVENTS.c.id),
                tr.const(COMPLETED_EVENT),
                func.lower(d.c.creator_address),
                cast(d.c.id, String),
                data,
                NOW,
            ),
        )
        .returning(EVENTS.c.id, EVENTS.c.owner_address)
        .cte("event")
    )
    delivery = fanout.deliveries(
        event.c.id, event.c.owner_address, tr.const(COMPLETED_EVENT), NOW, postgres=True
    ).cte("delivery")
    deliveries = select(func.count()).select_from(delivery).scalar_subquery()
    return (
        select(
            d, deliveries.label("deliveries"), DUE_UNOFFERED.label("due"), PUSH_RUNNER.label("push")
        )
        .add_cte(ended.cte("ended"))
        .add_cte(result.cte("result"))
        .add_cte(event)
    )


def _build(postgres: bool) -> Statements:
    return Statements(
        single=postgres,
        lock_runner=LOCK_RUNNER,
        candidates=_candidates(by_id=False, postgres=postgres),
        candidate_by_id=_candidates(by_id=True, postgres=postgres),
        claim=_claim(tr.CLAIM, postgres),
        claim_started=_claim(tr.CLAIM_STARTED, postgres),
        start=_start(postgres),
        complete=_complete(postgres),
        insert_attempts=insert(ATTEMPTS),
        start_attempt=(
            update(ATTEMPTS)
            .where(
                ATTEMPTS.c.task_id == _b("b_task_id", ATTEMPTS.c.task_id),
                ATTEMPTS.c.attempt == bindparam("b_n", type_=Integer),
            )
            .values(started_at=NOW)
        ),
        end_attempt=(
            update(ATTEMPTS)
            .where(
                ATTEMPTS.c.task_id == _b("b_task_id", ATTEMPTS.c.task_id),
                ATTEMPTS.c.attempt == bindparam("b_n", type_=Integer),
            )
            .values(
                started_at=func.coalesce(
                    ATTEMPTS.c.started_at, _b("b_started", ATTEMPTS.c.started_at)
                ),
                ended_at=NOW,
                outcome=bindparam("b_outcome", type_=String),
                exit_code=bindparam("b_exit_code", type_=Integer),
            )
        ),
        insert_result=insert(RESULTS),
    )


POSTGRES = _build(postgres=True)
SQLITE = _build(postgres=False)


def for_dialect(name: str) -> Statements:
    return POSTGRES if name == "postgresql" else SQLITE
