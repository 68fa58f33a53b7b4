"""All SQL of the runner registry."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
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


async def replace_models(
    session: AsyncSession, runner_id: uuid.UUID, models: list[dict[str, Any]], now: datetime
) -> None:
    await session.execute(delete(RunnerModel).where(RunnerModel.runner_id == runner_id))
    seen: dict[str, dict[str, Any]] = {}
    for m in models:
        seen[m["model_name"]] = m  # last one wins on duplicates
    if seen:
        await session.execute(
            insert(RunnerModel),
            [
                {
                    "id": uuid.uuid4(),
                    "runner_id": runner_id,
                    "model_name": name,
                    "is_loaded": bool(m.get("is_loaded", True)),
                    "max_tokens": int(m.get("max_tokens", 4096)),
                    "details": {
                        k: v
                        for k, v in m.items()
                        if k not in ("model_name", "is_loaded", "max_tokens")
                    },
                    "updated_at": now,
                }
                for name, m in seen.items()
            ],
        )


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
    q = select(Runner).where(Runner.status == "online", Runner.banned_at.is_(None))
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
