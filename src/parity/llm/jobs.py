"""The prompts job: each scheduler tick, fail queued prompts past their deadline, route the
queued ones no runner holds (failover included), and meter completions no closer metered.

It also ticks at once, rather than at its interval, when a prompt was left queued and a slot it
could take frees up (:class:`SlotWatch`)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parity.events.hub import EventHub
from parity.jobs.runner import PeriodicJob
from parity.llm import service
from parity.llm.deps import LlmDeps
from parity.waiters import Watch


class SlotWatch:
    """After a tick that left prompts queued because every runner serving their model is at
    capacity: watch the tasks that hold those runners' slots (``service.slot_holders``). The
    first event of one of them (completed, failed, retried after a lost lease, cancelled; on
    this replica or, through the wake-up relay, another) sets ``wake``, so the job routes the
    waiting prompts to the slot that freed instead of at its next interval; a claim given back
    untouched (a runner releasing it) records no event but wakes the watch the same way. Each
    tick replaces the watch; it lapses after ``seconds``."""

    def __init__(self, hub: EventHub, wake: asyncio.Event, seconds: float) -> None:
        self._hub, self._wake, self._seconds = hub, wake, seconds
        self._job: asyncio.Task[None] | None = None

    def arm(self, task_ids: Sequence[uuid.UUID]) -> None:
        """Watch ``task_ids`` (none: stop watching). Registered now, before the caller's
        transaction ends: an event committed meanwhile still wakes."""
        self.disarm()
        if not task_ids:
            return
        stack = contextlib.ExitStack()
        watches = [stack.enter_context(self._hub.watch_resource(str(t))) for t in task_ids]
        job = asyncio.get_running_loop().create_task(self._watch(watches))
        # Closed once the job is done (its waits ended first: a watch closed while its wait
        # is pending would be armed again by that wait), or cancelled before it ran.
        job.add_done_callback(lambda _: stack.close())
        self._job = job

    def disarm(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._job = None

    async def _watch(self, watches: list[Watch[str]]) -> None:
        waits = [asyncio.ensure_future(w.wait(self._seconds)) for w in watches]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if any(not t.cancelled() and t.exception() is None and t.result() for t in done):
                self._wake.set()
        finally:
            for t in waits:
                t.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


def prompts_job(deps: LlmDeps, interval: float) -> PeriodicJob:
    slots = SlotWatch(deps.tasks.events.hub, deps.route_now, max(2 * interval, 1.0))

    async def tick(session: AsyncSession, now: datetime) -> int:
        n = await service.expire_overdue(session, deps, now)
        stalled: set[str] = set()
        n += await service.route_queued(session, deps, now, stalled)
        n += await service.meter_completed(session, deps, now)
        slots.arm(await service.slot_holders(session, stalled) if stalled else [])
        return n

    return PeriodicJob("llm_prompts", interval, tick, wake=deps.route_now)
