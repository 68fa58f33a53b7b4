"""In-process wake-ups for the delivery loop and for GET /events waiters. A waiter holds no
database connection; it waits here and re-checks every few seconds, which also covers events
committed on another replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


class EventHub:
    def __init__(self) -> None:
        self.delivery_event = asyncio.Event()
        # waiter id -> (address it reads, or None for an operator reading all; its future)
        self._waiters: dict[int, tuple[str | None, asyncio.Future[None]]] = {}
        self._seq = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait(self, address: str | None, timeout: float) -> bool:
        """Wait for an event of ``address`` (any event when None); True when woken."""
        self._seq += 1
        key = self._seq
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[key] = (address, fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(key, None)
            if not fut.done():
                fut.cancel()

    def publish(self, owners: Iterable[str]) -> int:
        """New events of ``owners`` are committed: poke the delivery loop and wake only the
        waiters that may read them (theirs, and operators')."""
        self.delivery_event.set()
        wanted = set(owners)
        n = 0
        for address, fut in list(self._waiters.values()):
            if (address is None or address in wanted) and not fut.done():
                fut.set_result(None)
                n += 1
        return n

    def poke_delivery(self) -> None:
        self.delivery_event.set()

    def wake_all(self) -> None:
        for _, fut in list(self._waiters.values()):
            if not fut.done():
                with contextlib.suppress(asyncio.InvalidStateError):
                    fut.set_result(None)
