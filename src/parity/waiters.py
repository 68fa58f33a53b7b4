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
        self._by_key: dict[K, dict[int, asyncio.Future[None]]] = {}  # for wake_key
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
        fut = self._arm(key, slot)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._disarm(key, slot)

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

    @contextlib.contextmanager
    def watching(self, key: K) -> Iterator[Watch[K]]:
        """A waiter on ``key`` registered from now until the block ends: a wake-up that comes
        while the caller is still reading (before it calls :meth:`Watch.wait`) is not lost."""
        self._seq += 1
        watch = Watch(self, key, self._seq)
        try:
            yield watch
        finally:
            watch.close()

    def _arm(self, key: K, slot: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if slot not in self._futures:
            self._per_key[key] += 1
        self._futures[slot] = (key, fut)
        self._by_key.setdefault(key, {})[slot] = fut
        return fut

    def _disarm(self, key: K, slot: int) -> None:
        found = self._futures.pop(slot, None)
        if found is None:
            return
        self._per_key[key] -= 1
        if not self._per_key[key]:
            del self._per_key[key]
        same = self._by_key.get(key)
        if same is not None:
            same.pop(slot, None)
            if not same:
                del self._by_key[key]
        if not found[1].done():
            found[1].cancel()

    def wake_key(self, key: K) -> int:
        """Wake every waiter of ``key`` (found without a scan); how many."""
        n = 0
        for fut in list(self._by_key.get(key, {}).values()):
            if not fut.done():
                fut.set_result(None)
                n += 1
        return n

    def wake_all(self) -> None:
        for _, fut in list(self._futures.values()):
            if not fut.done():
                with contextlib.suppress(asyncio.InvalidStateError):
                    fut.set_result(None)


class Watch(Generic[K]):
    """One registered waiter of :meth:`Waiters.watching`."""

    def __init__(self, waiters: Waiters[K], key: K, slot: int) -> None:
        self._waiters, self._key, self._slot = waiters, key, slot
        self._fut = waiters._arm(key, slot)
        self.waiting = False  # inside wait() right now

    async def wait(self, timeout: float) -> bool:
        """True when woken since registration or the last wait, False after ``timeout``."""
        self.waiting = True
        try:
            await asyncio.wait_for(asyncio.shield(self._fut), timeout=timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self.waiting = False
            if self._fut.done():
                self._fut = self._waiters._arm(self._key, self._slot)

    def wake(self) -> None:
        """Wake this waiter only."""
        if not self._fut.done():
            self._fut.set_result(None)

    def close(self) -> None:
        self._waiters._disarm(self._key, self._slot)
