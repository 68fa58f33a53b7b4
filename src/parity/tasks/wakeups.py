"""In-process wake-ups for long-polling runners. A waiting request holds no database
connection; it waits here and re-checks every few seconds, which also covers wake-ups that
happened on another replica."""

from __future__ import annotations

import asyncio
import uuid

from parity.waiters import Waiters


class WakeHub:
    def __init__(self) -> None:
        self.push_event = asyncio.Event()
        self._waiters: Waiters[uuid.UUID] = Waiters()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait(self, runner_id: uuid.UUID, timeout: float) -> bool:
        """True when woken, False on timeout."""
        return await self._waiters.wait(runner_id, timeout)

    def wake_runner(self, runner_id: uuid.UUID) -> int:
        return len(self._waiters.wake(lambda rid: rid == runner_id))

    def wake_any(self, k: int, exclude: set[uuid.UUID] | None = None) -> int:
        """Wake up to ``k`` waiters, at most one per runner, oldest first."""
        woken: set[uuid.UUID] = set()

        def pick(rid: uuid.UUID) -> bool:
            if rid in woken or (exclude is not None and rid in exclude):
                return False
            woken.add(rid)
            return True

        return len(self._waiters.wake(pick, limit=k))

    def wake_all(self) -> None:
        self._waiters.wake_all()

    def poke_pushes(self) -> None:
        """Tell the push-delivery loop that new offers are waiting."""
        self.push_event.set()
