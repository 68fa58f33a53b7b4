"""The prompts job: each scheduler tick, fail queued prompts past their deadline, route the
queued ones no runner holds (failover included), and meter completions no closer metered."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parity.jobs.runner import PeriodicJob
from parity.llm import service
from parity.llm.deps import LlmDeps


def prompts_job(deps: LlmDeps, interval: float) -> PeriodicJob:
    async def tick(session: AsyncSession, now: datetime) -> int:
        n = await service.expire_overdue(session, deps, now)
        n += await service.route_queued(session, deps, now)
        n += await service.meter_completed(session, deps, now)
        return n

    return PeriodicJob("llm_prompts", interval, tick, wake=deps.route_now)
