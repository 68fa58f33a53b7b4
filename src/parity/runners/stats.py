"""Runner counts for the status page: one aggregate statement, never rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.tasks.states import RunnerStatus
from parity.runners.models import Runner

_OFFLINE = RunnerStatus.OFFLINE.value


async def count_by_status(session: AsyncSession, claim_holders: Select[Any]) -> dict[str, int]:
    """Runners by the status the runner list shows (online, busy, draining, offline), zeros
    included. ``claim_holders`` selects the ids of runners holding a claim (the task queue's
    ``tasks.stats.claim_holders``); it is passed in because this package does not know tasks.

    The CASE is ``runners.service.derived_status`` in SQL: banned reads offline, a drain
    requested by the owner or an operator reads draining unless the runner is offline, and an
    online runner holding a claim reads busy. ``claim_holders`` is uncorrelated, so both
    databases evaluate it once (a hashed subplan / a list subquery), not once per runner."""
    derived = case(
        (Runner.banned_at.is_not(None), _OFFLINE),
        (and_(Runner.drain_requested.is_(True), Runner.status != _OFFLINE), "draining"),
        (and_(Runner.status == RunnerStatus.ONLINE.value, Runner.id.in_(claim_holders)), "busy"),
        else_=Runner.status,
    ).label("derived_status")
    rows = await session.execute(select(derived, func.count()).group_by(derived))
    found = {str(status): int(n) for status, n in rows.all()}
    return {s.value: found.get(s.value, 0) for s in RunnerStatus}
