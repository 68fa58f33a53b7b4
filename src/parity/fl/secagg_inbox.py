"""Group commit for SecAgg+ stage messages: the messages of one round's stage that arrive while
a transaction for that stage runs are accepted together in the next one.

A stage's participants post within milliseconds of each other (each answers the same close),
and every message of a round takes the round's locks (on SQLite the one write lock): one by
one, each would wait for all before it, paying its own reads of the round. Together, one
transaction reads the round, its slots and the stage's messages once and inserts them all.
Nothing waits for a batch to fill: the first message runs at once, alone; only those that
would have queued behind it are grouped.

Batches run in their own task, so a caller that goes away (a dropped connection) neither
cancels the others' batch nor leaves it unfinished. Each item carries its own outcome: the
batch's runner sets it, and a refusal of one item never refuses another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

__all__ = ["Inbox"]


class Inbox(Generic[K, T]):
    """Items by key; ``run`` gets each batch of one key, one batch at a time per key."""

    def __init__(self) -> None:
        self._queued: dict[K, list[tuple[T, asyncio.Future[None]]]] = {}
        self._drains: set[asyncio.Task[None]] = set()  # held: a task nobody holds may vanish

    async def submit(self, key: K, item: T, run: Callable[[list[T]], Awaitable[None]]) -> None:
        """Hand ``item`` to the next batch of ``key`` and wait until that batch ran."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queued = self._queued.get(key)
        if queued is None:
            self._queued[key] = [(item, done)]
            drain = asyncio.ensure_future(self._drain(key, run))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        else:
            queued.append((item, done))
        await asyncio.shield(done)

    async def _drain(self, key: K, run: Callable[[list[T]], Awaitable[None]]) -> None:
        while True:
            batch = self._queued.get(key) or []
            if not batch:
                self._queued.pop(key, None)
                return
            self._queued[key] = []  # later items go into the next batch
            try:
                await run([item for item, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            except BaseException:  # cancelled (shutting down): nothing more runs for the key
                for _, done in [*batch, *self._queued.pop(key, [])]:
                    done.cancel()
                raise
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
