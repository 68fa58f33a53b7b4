"""All SQL of the runner registry."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parity.db.pagination import Cursor, newest_first
from parity.runners.models import Runner, RunnerModel


async def get(session: AsyncSession, runner_id: uuid.UUID, *, lock: bool = False) -> Runner | None:
    q = select(Runner).where(Runner.id == runner_id)
    if lock:
        q = q.with_for_update()
    return (await session.scalars(q)).first()


async def try_lock(session: AsyncSession, runner_id: uuid.UUID) -> bool:
    """Lock the runner row unless another transaction holds it (no wait): False when taken."""
    q = select(Runner.id).where(Runner.id == runner_id).with_for_update(skip_locked=True)
    return (await session.execute(q)).first() is not None


async def by_device(session: AsyncSession, device_id: str, *, lock: bool = False) -> Runner | None:
    q = select(Runner).where(Runner.device_id == device_id)
    if lock:
        q = q.with_for_update()
    return (await session.scalars(q)).first()


async def add(session: AsyncSession, runner: Runner) -> None:
    session.add(runner)
    await session.flush()


_COLUMNS = ("model_name", "is_loaded", "max_tokens")
_ModelSpec = tuple[bool, int, dict[str, Any]]  # is_loaded, max_tokens, details


def _reported(models: list[dict[str, Any]]) -> dict[str, _ModelSpec]:
    """A report as the rows store it, by name (the last one wins on duplicates)."""
    out: dict[str, _ModelSpec] = {}
    for m in models:
        details = {k: v for k, v in m.items() if k not in _COLUMNS}
        out[m["model_name"]] = (
            bool(m.get("is_loaded", True)),
            int(m.get("max_tokens", 4096)),
            details,
        )
    return out


async def sync_models(
    session: AsyncSession, runner_id: uuid.UUID, models: list[dict[str, Any]], now: datetime
) -> bool:
    """Make the runner's model rows equal its report, writing only the rows that differ: a
    runner repeats the same list in every heartbeat, and an unchanged list writes nothing.
    Compared with the stored rows (not a per-process memory), so it holds across replicas and
    restarts; callers hold the runner's row lock. Returns whether anything was written."""
    wanted = _reported(models)
    q = select(
        RunnerModel.id,
        RunnerModel.model_name,
        RunnerModel.is_loaded,
        RunnerModel.max_tokens,
        RunnerModel.details,
    ).where(RunnerModel.runner_id == runner_id)
    have = {row.model_name: row for row in (await session.execute(q)).all()}
    gone = [row.id for name, row in have.items() if name not in wanted]
    changed = [
        {"id": row.id, "is_loaded": spec[0], "max_tokens": spec[1], "details": spec[2]}
        for name, spec in wanted.items()
        if (row := have.get(name)) is not None
        and (row.is_loaded, row.max_tokens, row.details or {}) != spec
    ]
    added = [
        {
            "id": uuid.uuid4(),
            "runner_id": runner_id,
            "model_name": name,
            "is_loaded": spec[0],
            "max_tokens": spec[1],
            "details": spec[2],
            "updated_at": now,
        }
        for name, spec in wanted.items()
        if name not in have
    ]
    if gone:
        await session.execute(delete(RunnerModel).where(RunnerModel.id.in_(gone)))
    if changed:
        await session.execute(update(RunnerModel), [{**c, "updated_at": now} for c in changed])
    if added:
        await session.execute(insert(RunnerModel), added)
    return bool(gone or changed or added)


async def models_of(
    session: AsyncSession, runner_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[RunnerModel]]:
    if not runner_ids:
        return {}
    rows = await session.scalars(
        select(RunnerModel)
        .where(RunnerModel.runner_id.in_(runner_ids))
        .order_by(RunnerModel.model_name)
    )
    out: dict[uuid.UUID, list[RunnerModel]] = {}
    for m in rows.all():
        out.setdefault(m.runner_id, []).append(m)
    return out


async def list_runners(
    session: AsyncSession, owner: str | None, limit: int, after: Cursor | None
) -> list[Runner]:
    q = select(Runner)
    if owner is not None:
        q = q.where(Runner.owner_address == owner)
    q = newest_first(q, Runner.created_at, Runner.id, after, limit)
    return list((await session.scalars(q)).all())


async def online_runners(session: AsyncSession) -> list[Runner]:
    """Runners that may be offered work: online, not draining, not banned."""
    q = select(Runner).where(
        Runner.status == "online", Runner.drain_requested.is_(False), Runner.banned_at.is_(None)
    )
    return list((await session.scalars(q)).all())


async def stale_runners(session: AsyncSession, cutoff: datetime, limit: int) -> list[Runner]:
    q = (
        select(Runner)
        .where(Runner.status != "offline", Runner.last_heartbeat < cutoff)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.scalars(q)).all())


async def all_runners(session: AsyncSession) -> list[Runner]:
    return list((await session.scalars(select(Runner))).all())
