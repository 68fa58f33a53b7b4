"""In-process wake-ups for the delivery loop and for GET /events waiters. A waiter holds no
database connection; it waits here and re-checks every few seconds. On PostgreSQL the wake-up
relay (parity.relay) forwards publications to the other replicas through ``forward``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from parity.waiters import Waiters, Watch


class EventHub:
    def __init__(self) -> None:
        self.delivery_event = asyncio.Event()
        # each waiter's key: the address it reads, or None for an operator reading all
        self._waiters: Waiters[str | None] = Waiters()
        # waiters for one resource's events (a prompt's ?wait), keyed by its id
        self._resources: Waiters[str] = Waiters()
        # Set by the relay: sends a publication to the other replicas.
        self.forward: Callable[[dict[str, Any]], None] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait(self, address: str | None, timeout: float) -> bool:
        """Wait for an event of ``address`` (any event when None); True when woken."""
        return await self._waiters.wait(address, timeout)

    def watch_resource(self, resource_id: str) -> contextlib.AbstractContextManager[Watch[str]]:
        """Watch for events about one resource (a task or prompt id): register first, then
        read, then wait (a commit between the read and the wait still wakes)."""
        return self._resources.watching(resource_id)

    def publish(
        self,
        owners: Iterable[str],
        *,
        deliveries: bool = True,
        forward: bool = True,
        resources: Iterable[str] = (),
    ) -> int:
        """New events of ``owners`` (about ``resources``) are committed: wake only the waiters
        that may read them (theirs, and operators'; and those of each resource), here and on
        the other replicas, and poke the delivery loops when webhook deliveries were queued
        with them."""
        if deliveries:
            self.delivery_event.set()
        wanted = set(owners)
        about = sorted(set(resources))
        if forward and self.forward is not None:
            message: dict[str, Any] = {"k": "events", "a": sorted(wanted), "d": deliveries}
            if about:
                message["s"] = about
            self.forward(message)
        for resource_id in about:
            self._resources.wake_key(resource_id)
        return len(self._waiters.wake(lambda address: address is None or address in wanted))

    def wake_readers(self, *, forward: bool = True) -> None:
        """Wake every /events reader and the delivery loop (they re-read from their cursors)."""
        self.delivery_event.set()
        self._waiters.wake_all()
        self._resources.wake_all()
        if forward and self.forward is not None:
            self.forward({"k": "events", "a": None})

    def poke_delivery(self) -> None:
        self.delivery_event.set()

    def wake_all(self) -> None:
        self._waiters.wake_all()
        self._resources.wake_all()
