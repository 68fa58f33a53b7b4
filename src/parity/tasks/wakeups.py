"""In-process wake-ups for long-polling runners. A waiting request holds no database
connection; it waits here and re-checks every few seconds. On PostgreSQL the wake-up relay
(parity.relay) forwards wake-ups to the other replicas through ``forward``; the re-check covers
any it misses."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

from parity.waiters import Waiters, Watch


class WakeHub:
    def __init__(self) -> None:
        self.push_event = asyncio.Event()
        self._waiters: Waiters[uuid.UUID] = Waiters()
        # Set by the relay: sends a wake-up to the other replicas.
        self.forward: Callable[[dict[str, Any]], None] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def is_waiting(self, runner_id: uuid.UUID) -> bool:
        """Whether that runner is in a long-poll on this replica right now."""
        return runner_id in self._waiters

    async def wait(self, runner_id: uuid.UUID, timeout: float) -> bool:
        """True when woken, False on timeout."""
        return await self._waiters.wait(runner_id, timeout)

    def watching(self, runner_id: uuid.UUID) -> contextlib.AbstractContextManager[Watch[uuid.UUID]]:
        """The runner's waiter registered for a whole long-poll, its claim attempts included:
        work committed while an attempt reads is a wake-up kept for the next wait."""
        return self._waiters.watching(runner_id)

    def wake_runner(self, runner_id: uuid.UUID, *, forward: bool = True) -> int:
        """Wake that runner's long-poll; when it is not waiting here, it may be on another
        replica."""
        n = len(self._waiters.wake(lambda rid: rid == runner_id))
        if n == 0 and forward and self.forward is not None:
            self.forward({"k": "runner", "r": str(runner_id)})
        return n

    def wake_any(
        self, k: int, exclude: set[uuid.UUID] | None = None, *, forward: bool = True
    ) -> int:
        """Wake up to ``k`` waiters, at most one per runner, oldest first; the ones not found
        here are asked of the other replicas."""
        woken: set[uuid.UUID] = set()

        def pick(rid: uuid.UUID) -> bool:
            if rid in woken or (exclude is not None and rid in exclude):
                return False
            woken.add(rid)
            return True

        n = len(self._waiters.wake(pick, limit=k))
        if n < k and forward and self.forward is not None:
            self.forward({"k": "any", "n": k - n})
        return n

    def wake_all(self) -> None:
        self._waiters.wake_all()

    def poke_pushes(self, *, forward: bool = True) -> None:
        """Tell the push-delivery loop that new offers are waiting."""
        self.push_event.set()
        if forward and self.forward is not None:
            self.forward({"k": "pushes"})
