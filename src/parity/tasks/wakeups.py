"""In-process wake-ups for long-polling runners. A waiting request holds no database
connection; it waits here and re-checks every few seconds, which also covers wake-ups that
happened on another replica."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict


class WakeHub:
    def __init__(self) -> None:
        self.push_event = asyncio.Event()
        # runner id -> its waiters, oldest first; one dict keeps FIFO across runners.
        self._waiters: OrderedDict[tuple[uuid.UUID, int], asyncio.Future[None]] = OrderedDict()
        self._seq = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def waiting_runners(self) -> set[uuid.UUID]:
        return {rid for rid, _ in self._waiters}

    async def wait(self, runner_id: uuid.UUID, timeout: float) -> bool:
        """True when woken, False on timeout."""
        self._seq += 1
        key = (runner_id, self._seq)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(key, None)
            if not fut.done():
                fut.cancel()

    def wake_runner(self, runner_id: uuid.UUID) -> int:
        n = 0
        for key, fut in list(self._waiters.items()):
            if key[0] == runner_id and not fut.done():
                fut.set_result(None)
                n += 1
        return n

    def wake_any(self, k: int, exclude: set[uuid.UUID] | None = None) -> int:
        """Wake up to ``k`` waiters, at most one per runner, oldest first."""
        woken: set[uuid.UUID] = set()
        for key, fut in list(self._waiters.items()):
            if len(woken) >= k:
                break
            rid = key[0]
            if rid in woken or (exclude and rid in exclude) or fut.done():
                continue
            fut.set_result(None)
            woken.add(rid)
        return len(woken)

    def wake_all(self) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                with contextlib.suppress(asyncio.InvalidStateError):
                    fut.set_result(None)

    def poke_pushes(self) -> None:
        """Tell the push-delivery loop that new offers are waiting."""
        self.push_event.set()
