"""All SQL of the LLM domain. Prompts are joined with their task rows to read the status
(never stored twice); task rows are only read here, through the queue's own table handles
(every write to them goes through the task services)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, and_, bindparam, func, literal, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from parity.core.tasks.states import ACTIVE, TaskStatus, TaskType
from parity.llm.models import Prompt, RunnerModelStats
from parity.runners.models import Runner, RunnerModel
from parity.tasks.queue.statements import ATTEMPTS, EXCLUSIONS, RESULTS, TASKS

_T, _R = TASKS.c, RESULTS.c
_PENDING = TaskStatus.PENDING.value
_LLM = TaskType.LLM.value
_ACTIVE = sorted(s.value for s in ACTIVE)


@dataclass(frozen=True)
class PromptRow:
    """A prompt with what its task row and accepted result say about it."""

    prompt: Prompt
    status: str
    runner_id: uuid.UUID | None
    target_runner_id: uuid.UUID | None
    attempts: int
    max_attempts: int
    last_error: str | None
    started_at: datetime | None
    completed_at: datetime | None
    output: str | None
    usage: dict[str, Any] | None


async def get(session: AsyncSession, prompt_id: uuid.UUID, *, lock: bool = False) -> Prompt | None:
    q = select(Prompt).where(Prompt.id == prompt_id)
    if lock:
        q = q.with_for_update()
    return (await session.scalars(q)).first()


PROMPTS = cast(Table, Prompt.__table__)
_PROMPT_KEYS = tuple(c.key for c in PROMPTS.c)
_P = PROMPTS.c
_ID = bindparam("b_id", type_=_P.id.type)
# Prompts with their task's state and result, in Core: defined once, no ORM loading. ROW is
# the read of every GET and of every ?wait re-check; the lists add their filters and order.
_JOINED = (
    select(
        *PROMPTS.c,
        _T.status.label("t_status"),
        _T.runner_id.label("t_runner_id"),
        _T.target_runner_id.label("t_target_runner_id"),
        _T.attempts.label("t_attempts"),
        _T.max_attempts.label("t_max_attempts"),
        _T.last_error.label("t_last_error"),
        _T.started_at.label("t_started_at"),
        _T.completed_at.label("t_completed_at"),
        _R.output.label("r_output"),
        _R.usage.label("r_usage"),
    )
    .join(TASKS, _T.id == _P.task_id)
    .outerjoin(RESULTS, _R.task_id == _T.id)
)
ROW = _JOINED.where(_P.id == _ID)
TASK_OF = select(_P.task_id).where(_P.id == _ID)


def _prompt_row(r: Any) -> PromptRow:
    n = len(_PROMPT_KEYS)
    prompt = Prompt(**dict(zip(_PROMPT_KEYS, r[:n], strict=True)))
    return PromptRow(prompt, *r[n:])


async def row_once(conn: AsyncConnection, prompt_id: uuid.UUID) -> PromptRow | None:
    """One prompt with its task's state and result (None: no such prompt), on a connection
    outside any unit of work (one statement)."""
    r = (await conn.execute(ROW, {"b_id": prompt_id})).first()
    return None if r is None else _prompt_row(r)


async def task_of(conn: AsyncConnection, prompt_id: uuid.UUID) -> uuid.UUID | None:
    """The prompt's task id (None when there is no such prompt)."""
    found: uuid.UUID | None = (await conn.execute(TASK_OF, {"b_id": prompt_id})).scalar()
    return found


async def list_rows(
    session: AsyncSession, creator: str | None, limit: int, offset: int
) -> tuple[list[PromptRow], int]:
    q, count = _JOINED, select(func.count()).select_from(PROMPTS)
    if creator is not None:
        q = q.where(_P.creator_address == creator)
        count = count.where(_P.creator_address == creator)
    q = q.order_by(_P.created_at.desc(), _P.id.desc()).limit(limit).offset(offset)
    rows = [_prompt_row(r) for r in (await session.execute(q)).all()]
    return rows, int(await session.scalar(count) or 0)


async def usage_rows(
    session: AsyncSession, creator: str, since: datetime | None, until: datetime | None
) -> list[PromptRow]:
    q = _JOINED.where(_P.creator_address == creator)
    if since is not None:
        q = q.where(_P.created_at >= since)
    if until is not None:
        q = q.where(_P.created_at < until)
    return [_prompt_row(r) for r in (await session.execute(q.order_by(_P.created_at))).all()]


# -- routing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Serving:
    """An online runner that reports the model."""

    runner_id: uuid.UUID
    max_concurrent_tasks: int
    push: bool
    loaded: bool
    max_tokens: int
    details: dict[str, Any]


def _claiming() -> list[Any]:
    return [
        Runner.status == "online",
        Runner.banned_at.is_(None),
        Runner.drain_requested.is_(False),
    ]


@dataclass(frozen=True)
class Loaded:
    """A runner serving a model, with what routing weighs: its outstanding work (active claims
    of every type plus prompts routed to it and not claimed yet) and its latency EWMA."""

    serving: Serving
    outstanding: int
    latency_ewma_ms: float | None


def _serving() -> Select[Any]:
    """The online, claiming runners that report the model ``b_model``, each with its active
    claims, its prompts routed and not claimed yet, and its latency EWMA for the model."""
    model = bindparam("b_model", type_=RunnerModel.model_name.type)
    active = (
        select(func.count())
        .select_from(TASKS)
        .where(_T.runner_id == Runner.id, _T.status.in_(_ACTIVE))
        .scalar_subquery()
    )
    routed = (
        select(func.count())
        .select_from(TASKS)
        .where(_T.target_runner_id == Runner.id, _T.status == _PENDING, _T.type == _LLM)
        .scalar_subquery()
    )
    return (
        select(
            Runner.id.label("runner_id"),
            Runner.max_concurrent_tasks,
            and_(Runner.webhook_url.is_not(None), Runner.webhook_secret.is_not(None)).label("push"),
            RunnerModel.is_loaded,
            RunnerModel.max_tokens,
            RunnerModel.details,
            active.label("active"),
            routed.label("routed"),
            RunnerModelStats.latency_ewma_ms,
        )
        .join(RunnerModel, RunnerModel.runner_id == Runner.id)
        .outerjoin(
            RunnerModelStats,
            and_(RunnerModelStats.runner_id == Runner.id, RunnerModelStats.model == model),
        )
        .where(RunnerModel.model_name == model, *_claiming())
    )


# Defined once: routing reads it at every submit (bound parameters, one compiled form).
SERVING = _serving()
SERVING_ORDERED = SERVING.order_by(Runner.id)


def loaded_of(r: Any) -> Loaded:
    """A row of :data:`SERVING` (or of a statement carrying its columns) as routing sees it."""
    return Loaded(
        Serving(
            r.runner_id, r.max_concurrent_tasks, bool(r.push), bool(r.is_loaded), r.max_tokens,
            dict(r.details or {}),
        ),
        int(r.active or 0) + int(r.routed or 0),
        None if r.latency_ewma_ms is None else float(r.latency_ewma_ms),
    )  # fmt: skip


async def serving_with_load(session: AsyncSession, model: str) -> list[Loaded]:
    """The online, claiming runners that report ``model``, each with its outstanding work
    and its latency EWMA for the model, in one statement (routing's read)."""
    rows = (await session.execute(SERVING_ORDERED, {"b_model": model})).all()
    return [loaded_of(r) for r in rows]


async def model_reports(session: AsyncSession) -> list[tuple[uuid.UUID, RunnerModel]]:
    """Every model of every online, claiming runner (discovery)."""
    q = select(Runner.id, RunnerModel).join(RunnerModel, RunnerModel.runner_id == Runner.id)
    rows = (await session.execute(q.where(*_claiming()))).all()
    return [(r[0], r[1]) for r in rows]


async def exclusions(session: AsyncSession, task_id: uuid.UUID) -> set[uuid.UUID]:
    q = select(EXCLUSIONS.c.runner_id).where(EXCLUSIONS.c.task_id == task_id)
    return set((await session.scalars(q)).all())


# -- the job's work lists -----------------------------------------------------------------------


def _pending_prompts() -> Select[Any]:
    return (
        select(Prompt)
        .join(TASKS, _T.id == Prompt.task_id)
        .where(_T.status == _PENDING, _T.type == _LLM)
    )


async def unrouted(
    session: AsyncSession, now: datetime, offered_before: datetime, limit: int
) -> list[tuple[Prompt, str | None, uuid.UUID | None]]:
    """Queued prompts within their deadline that no claiming runner is routed to: never
    routed, put back by a failure (the retry clears the target), routed to a runner that has
    gone offline, started draining or been banned, or routed before ``offered_before`` and
    not claimed since; each with its task's ``last_error`` (why its last attempt failed, if
    one did) and the runner it is still routed to (None when none)."""
    target = cast(Table, Runner.__table__).alias("target")
    q = (
        _pending_prompts()
        .add_columns(_T.last_error, _T.target_runner_id)
        .outerjoin(target, target.c.id == _T.target_runner_id)
        .where(
            Prompt.deadline_at > now,
            or_(
                _T.target_runner_id.is_(None),
                target.c.id.is_(None),
                target.c.status != "online",
                target.c.banned_at.is_not(None),
                target.c.drain_requested.is_(True),
                Prompt.routed_at < offered_before,
            ),
        )
        .order_by(Prompt.created_at, Prompt.id)
        .limit(limit)
    )
    return [(r[0], r[1], r[2]) for r in (await session.execute(q)).all()]


async def slot_holders(session: AsyncSession, models: list[str], limit: int) -> list[uuid.UUID]:
    """The tasks that hold a slot of a claiming runner serving one of ``models``: its active
    claims (of any type) and the prompts routed to it and not claimed yet."""
    serving = (
        select(RunnerModel.runner_id)
        .join(Runner, Runner.id == RunnerModel.runner_id)
        .where(RunnerModel.model_name.in_(models), *_claiming())
    )
    q = (
        select(_T.id)
        .where(
            or_(
                and_(_T.status.in_(_ACTIVE), _T.runner_id.in_(serving)),
                and_(_T.status == _PENDING, _T.type == _LLM, _T.target_runner_id.in_(serving)),
            )
        )
        .limit(limit)
    )
    return list((await session.scalars(q)).all())


async def past_deadline(session: AsyncSession, now: datetime, limit: int) -> list[Prompt]:
    q = _pending_prompts().where(Prompt.deadline_at <= now)
    return list((await session.scalars(q.order_by(Prompt.deadline_at).limit(limit))).all())


@dataclass(frozen=True)
class ToMeter:
    """A completed, unmetered prompt (locked) with what metering reads of its task."""

    prompt: Prompt
    runner_id: uuid.UUID | None
    completed_at: datetime | None
    claimed_at: datetime | None
    output: str | None
    usage: dict[str, Any]


async def to_meter(session: AsyncSession, limit: int) -> list[ToMeter]:
    """Up to ``limit`` completed prompts not metered yet, oldest first, each with its task's
    runner and times, its accepted result and when its last attempt was claimed: one
    statement (prompt rows locked, skipping those another replica is metering)."""
    q = (
        select(Prompt, _T.runner_id, _T.completed_at, ATTEMPTS.c.claimed_at, _R.output, _R.usage)
        .join(TASKS, _T.id == Prompt.task_id)
        .join(RESULTS, _R.task_id == Prompt.task_id)
        .outerjoin(
            ATTEMPTS, and_(ATTEMPTS.c.task_id == Prompt.task_id, ATTEMPTS.c.attempt == _T.attempts)
        )
        .where(Prompt.metered_at.is_(None), _T.status == TaskStatus.COMPLETED.value)
        .order_by(Prompt.created_at)
        .limit(limit)
        .with_for_update(of=Prompt, skip_locked=True)
    )
    return [
        ToMeter(r[0], r[1], r[2], r[3], r[4], dict(r[5] or {}))
        for r in (await session.execute(q)).all()
    ]


_TASK_ID = bindparam("b_task_id", type_=_T.id.type)
# What metering reads of a prompt's task, in one statement (see :func:`completion_facts`).
COMPLETION_FACTS = (
    select(
        _T.status,
        _T.runner_id,
        _T.completed_at,
        ATTEMPTS.c.claimed_at,
        _R.task_id.label("result_task_id"),
        _R.output,
        _R.usage,
    )
    .outerjoin(RESULTS, _R.task_id == _T.id)
    .outerjoin(ATTEMPTS, and_(ATTEMPTS.c.task_id == _T.id, ATTEMPTS.c.attempt == _T.attempts))
    .where(_T.id == _TASK_ID)
)


async def completion_facts(session: AsyncSession, task_id: uuid.UUID) -> Any:
    """The task's status, runner and completion time, when its last attempt was claimed, and
    its accepted result (``result_task_id`` None before a completion); None when the task is
    missing."""
    return (await session.execute(COMPLETION_FACTS, {"b_task_id": task_id})).first()


# -- latency EWMA -------------------------------------------------------------------------------


async def locked_latency(
    session: AsyncSession, runner_id: uuid.UUID, model: str, now: datetime
) -> RunnerModelStats | None:
    """The (runner, model) stats row, locked; None when the runner row is gone (its stats
    rows go with it: the seed below is only written for an existing runner)."""
    table = cast(Table, RunnerModelStats.__table__)
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    seed = select(
        Runner.id,
        literal(model, type_=table.c.model.type),
        literal(0.0, type_=table.c.latency_ewma_ms.type),
        literal(0, type_=table.c.samples.type),
        literal(now, type_=table.c.updated_at.type),
    ).where(Runner.id == runner_id)
    columns = ["runner_id", "model", "latency_ewma_ms", "samples", "updated_at"]
    await session.execute(insert(table).from_select(columns, seed).on_conflict_do_nothing())
    q = (
        select(RunnerModelStats)
        .where(RunnerModelStats.runner_id == runner_id, RunnerModelStats.model == model)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(q)).first()
