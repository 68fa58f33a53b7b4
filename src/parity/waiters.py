"""In-process waiters: a request that waits for something holds no database connection, only
a future here. Waking is selective (by key), so k waiters can be woken rather than all."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")


class Waiters(Generic[K]):
    def __init__(self) -> None:
        # insertion order = waiting order (oldest first)
        self._futures: dict[int, tuple[K, asyncio.Future[None]]] = {}
        self._per_key: Counter[K] = Counter()  # waiters per key: membership without a scan
        self._seq = 0

    def __len__(self) -> int:
        return len(self._futures)

    def __contains__(self, key: object) -> bool:
        """Whether someone waits on ``key`` right now (woken ones count until they return)."""
        return self._per_key[key] > 0  # type: ignore[index]

    def keys(self) -> Iterator[K]:
        return (key for key, _ in self._futures.values())

    async def wait(self, key: K, timeout: float) -> bool:
        """True when woken, False when ``timeout`` seconds passed first."""
        self._seq += 1
        slot = self._seq
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures[slot] = (key, fut)
        self._per_key[key] += 1
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._futures.pop(slot, None)
            self._per_key[key] -= 1
            if not self._per_key[key]:
                del self._per_key[key]
            if not fut.done():
                fut.cancel()

    def wake(self, select: Callable[[K], bool], limit: int | None = None) -> list[K]:
        """Wake the oldest waiters whose key ``select`` accepts (at most ``limit``)."""
        woken: list[K] = []
        for key, fut in list(self._futures.values()):
            if limit is not None and len(woken) >= limit:
                break
            if not fut.done() and select(key):
                fut.set_result(None)
                woken.append(key)
        return woken

    def wake_all(self) -> None:
        for _, fut in list(self._futures.values()):
            if not fut.done():
                with contextlib.suppress(asyncio.InvalidStateError):
                    fut.set_result(None)
