"""All SQL of the LLM domain. Prompts are joined with their task rows to read the status
(never stored twice); task rows are only read here, through the queue's own table handles
(every write to them goes through the task services)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, and_, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

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


def _rows() -> Select[Any]:
    return (
        select(
            Prompt,
            _T.status,
            _T.runner_id,
            _T.target_runner_id,
            _T.attempts,
            _T.max_attempts,
            _T.last_error,
            _T.started_at,
            _T.completed_at,
            _R.output,
            _R.usage,
        )
        .join(TASKS, _T.id == Prompt.task_id)
        .outerjoin(RESULTS, _R.task_id == _T.id)
    )


def _row(r: Any) -> PromptRow:
    return PromptRow(r[0], *r[1:])


async def add(session: AsyncSession, prompt: Prompt) -> None:
    session.add(prompt)
    await session.flush()


async def get(session: AsyncSession, prompt_id: uuid.UUID, *, lock: bool = False) -> Prompt | None:
    q = select(Prompt).where(Prompt.id == prompt_id)
    if lock:
        q = q.with_for_update()
    return (await session.scalars(q)).first()


async def get_row(session: AsyncSession, prompt_id: uuid.UUID) -> PromptRow | None:
    found = (await session.execute(_rows().where(Prompt.id == prompt_id))).first()
    return None if found is None else _row(found)


async def list_rows(
    session: AsyncSession, creator: str | None, limit: int, offset: int
) -> tuple[list[PromptRow], int]:
    q, count = _rows(), select(func.count()).select_from(Prompt)
    if creator is not None:
        q = q.where(Prompt.creator_address == creator)
        count = count.where(Prompt.creator_address == creator)
    q = q.order_by(Prompt.created_at.desc(), Prompt.id.desc()).limit(limit).offset(offset)
    rows = [_row(r) for r in (await session.execute(q)).all()]
    return rows, int(await session.scalar(count) or 0)


async def usage_rows(
    session: AsyncSession, creator: str, since: datetime | None, until: datetime | None
) -> list[PromptRow]:
    q = _rows().where(Prompt.creator_address == creator)
    if since is not None:
        q = q.where(Prompt.created_at >= since)
    if until is not None:
        q = q.where(Prompt.created_at < until)
    return [_row(r) for r in (await session.execute(q.order_by(Prompt.created_at))).all()]


async def result_of(
    session: AsyncSession, task_id: uuid.UUID
) -> tuple[str | None, dict[str, Any]] | None:
    """The accepted result's output and usage (None before a completion)."""
    q = select(_R.output, _R.usage).where(_R.task_id == task_id)
    found = (await session.execute(q)).first()
    return None if found is None else (found[0], dict(found[1] or {}))


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


async def serving_with_load(session: AsyncSession, model: str) -> list[Loaded]:
    """The online, claiming runners that report ``model``, each with its outstanding work
    and its latency EWMA for the model, in one statement (routing's read)."""
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
    q = (
        select(
            Runner.id,
            Runner.max_concurrent_tasks,
            and_(Runner.webhook_url.is_not(None), Runner.webhook_secret.is_not(None)),
            RunnerModel.is_loaded,
            RunnerModel.max_tokens,
            RunnerModel.details,
            active,
            routed,
            RunnerModelStats.latency_ewma_ms,
        )
        .join(RunnerModel, RunnerModel.runner_id == Runner.id)
        .outerjoin(
            RunnerModelStats,
            and_(RunnerModelStats.runner_id == Runner.id, RunnerModelStats.model == model),
        )
        .where(RunnerModel.model_name == model, *_claiming())
        .order_by(Runner.id)
    )
    return [
        Loaded(
            Serving(r[0], r[1], bool(r[2]), bool(r[3]), r[4], dict(r[5] or {})),
            int(r[6] or 0) + int(r[7] or 0),
            None if r[8] is None else float(r[8]),
        )
        for r in (await session.execute(q)).all()
    ]


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


async def unrouted(session: AsyncSession, now: datetime, limit: int) -> list[Prompt]:
    """Queued prompts within their deadline that no claiming runner is routed to: never
    routed, put back by a failure (the retry clears the target), or routed to a runner that
    has gone offline, started draining or been banned."""
    target = cast(Table, Runner.__table__).alias("target")
    q = (
        _pending_prompts()
        .outerjoin(target, target.c.id == _T.target_runner_id)
        .where(
            Prompt.deadline_at > now,
            or_(
                _T.target_runner_id.is_(None),
                target.c.id.is_(None),
                target.c.status != "online",
                target.c.banned_at.is_not(None),
                target.c.drain_requested.is_(True),
            ),
        )
        .order_by(Prompt.created_at, Prompt.id)
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


async def claimed_at(session: AsyncSession, task_id: uuid.UUID, attempt: int) -> datetime | None:
    q = select(ATTEMPTS.c.claimed_at).where(
        ATTEMPTS.c.task_id == task_id, ATTEMPTS.c.attempt == attempt
    )
    found: datetime | None = await session.scalar(q)
    return found


async def task_facts(session: AsyncSession, task_id: uuid.UUID) -> Any:
    """The task row's status, runner, attempts and times (None when missing)."""
    q = select(_T.status, _T.runner_id, _T.attempts, _T.started_at, _T.completed_at).where(
        _T.id == task_id
    )
    return (await session.execute(q)).first()


# -- latency EWMA -------------------------------------------------------------------------------


async def locked_latency(
    session: AsyncSession, runner_id: uuid.UUID, model: str, now: datetime
) -> RunnerModelStats | None:
    """The (runner, model) stats row, locked; None when the runner row is gone."""
    if await session.scalar(select(Runner.id).where(Runner.id == runner_id)) is None:
        return None
    table = cast(Table, RunnerModelStats.__table__)
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    seed = {"runner_id": runner_id, "model": model, "latency_ewma_ms": 0.0}
    await session.execute(
        insert(table).values(**seed, samples=0, updated_at=now).on_conflict_do_nothing()
    )
    q = (
        select(RunnerModelStats)
        .where(RunnerModelStats.runner_id == runner_id, RunnerModelStats.model == model)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(q)).first()
