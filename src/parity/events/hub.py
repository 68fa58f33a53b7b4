"""In-process wake-ups for the delivery loop and for GET /events waiters. A waiter holds no
database connection; it waits here and re-checks every few seconds, which also covers events
committed on another replica."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from parity.waiters import Waiters


class EventHub:
    def __init__(self) -> None:
        self.delivery_event = asyncio.Event()
        # each waiter's key: the address it reads, or None for an operator reading all
        self._waiters: Waiters[str | None] = Waiters()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait(self, address: str | None, timeout: float) -> bool:
        """Wait for an event of ``address`` (any event when None); True when woken."""
        return await self._waiters.wait(address, timeout)

    def publish(self, owners: Iterable[str]) -> int:
        """New events of ``owners`` are committed: poke the delivery loop and wake only the
        waiters that may read them (theirs, and operators')."""
        self.delivery_event.set()
        wanted = set(owners)
        return len(self._waiters.wake(lambda address: address is None or address in wanted))

    def poke_delivery(self) -> None:
        self.delivery_event.set()

    def wake_all(self) -> None:
        self._waiters.wake_all()
