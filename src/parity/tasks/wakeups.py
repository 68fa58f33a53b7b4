"""In-process wake-ups for long-polling runners. A waiting request holds no database
connection; it waits here and re-checks every few seconds. On PostgreSQL the wake-up relay
(parity.relay) forwards wake-ups to the other replicas through ``forward``; the re-check covers
any it misses.

A claim can also be handed to a waiting long-poll (``tasks.handoff``): the transaction that
creates a task routed to a runner whose long-poll waits here claims it for that runner, in the
same transaction, through the queue's one claim, and the long-poll answers it after the commit
instead of running a claim transaction of its own. :meth:`WakeHub.reserve` picks such a
long-poll (one inside its wait, not already reserved); the transaction's outcome resolves the
reservation (the claim after the commit, nothing after a rollback). A claim whose long-poll is
gone by then (its runner hung up) is given back untouched through ``release_orphan``."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from parity.logging import get_logger
from parity.waiters import Waiters, Watch

log = get_logger("parity.tasks")
# How long a long-poll waits for the transaction that reserved it to end (it is committing).
HANDOFF_SETTLE_SECONDS = 5.0


class Taker:
    """A long-poll that takes claims handed to it: its watch plus the reservation in flight."""

    def __init__(self, watch: Watch[uuid.UUID], start: bool) -> None:
        self.watch = watch
        self.start = start  # the long-poll claims with start=true: a handed claim is started
        self.outcome: asyncio.Future[Any] | None = None  # set while reserved
        self.closed = False

    @property
    def free(self) -> bool:
        """Inside its wait, open and not reserved: a claim may be handed to it now."""
        return self.watch.waiting and self.outcome is None and not self.closed

    async def wait(self, timeout: float) -> bool:
        return await self.watch.wait(timeout)

    async def take(self, settle: float = HANDOFF_SETTLE_SECONDS) -> Any | None:
        """The claim handed to this long-poll, once the transaction that reserved it has ended
        (waiting up to ``settle`` seconds for it); None when nothing was handed or that
        transaction rolled back."""
        fut = self.outcome
        if fut is None:
            return None
        try:
            got = await asyncio.wait_for(asyncio.shield(fut), settle)
        except TimeoutError:
            return None  # still committing: a later take (or the close) sees its outcome
        if self.outcome is fut:
            self.outcome = None
        return got


class Handoff:
    """A reservation of one waiting long-poll by a transaction that claims for it."""

    def __init__(self, hub: WakeHub, runner_id: uuid.UUID, taker: Taker) -> None:
        self._hub, self.runner_id, self._taker = hub, runner_id, taker
        self._fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        taker.outcome = self._fut

    @property
    def start(self) -> bool:
        return self._taker.start

    def deliver(self, claim: Any) -> bool:
        """After the commit: the long-poll answers ``claim``. False when it has gone meanwhile:
        the claim is then given back (``release_orphan``)."""
        if self._fut.done():
            return False
        if self._taker.closed:
            self._fut.set_result(None)
            self._hub.orphaned(self.runner_id, claim)
            return False
        self._fut.set_result(claim)
        self._taker.watch.wake()
        self._hub.handed += 1
        return True

    def cancel(self) -> None:
        """The transaction rolled back, or claimed nothing: the long-poll is free again."""
        if not self._fut.done():
            self._fut.set_result(None)
        if self._taker.outcome is self._fut:
            self._taker.outcome = None


class WakeHub:
    def __init__(self) -> None:
        self.push_event = asyncio.Event()
        self._waiters: Waiters[uuid.UUID] = Waiters()
        self._takers: dict[uuid.UUID, list[Taker]] = {}
        # Set by the relay: sends a wake-up to the other replicas.
        self.forward: Callable[[dict[str, Any]], None] | None = None
        # Set by the app: gives back (untouched) a claim handed to a long-poll that had gone.
        self.release_orphan: Callable[[uuid.UUID, Any], None] | None = None
        self.handed = 0  # claims handed to long-polls (counted for tests and stats)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def is_waiting(self, runner_id: uuid.UUID) -> bool:
        """Whether that runner is in a long-poll on this replica right now."""
        return runner_id in self._waiters

    async def wait(self, runner_id: uuid.UUID, timeout: float) -> bool:
        """True when woken, False on timeout."""
        return await self._waiters.wait(runner_id, timeout)

    @contextlib.contextmanager
    def taking(self, runner_id: uuid.UUID, *, start: bool) -> Iterator[Taker]:
        """The runner's waiter registered for a whole long-poll, its claim attempts included
        (work committed while an attempt reads is a wake-up kept for the next wait), which also
        takes claims handed to it."""
        with self._waiters.watching(runner_id) as watch:
            taker = Taker(watch, start)
            self._takers.setdefault(runner_id, []).append(taker)
            try:
                yield taker
            finally:
                taker.closed = True
                same = self._takers.get(runner_id, [])
                same.remove(taker)
                if not same:
                    self._takers.pop(runner_id, None)
                fut = taker.outcome
                if fut is not None and fut.done() and fut.result() is not None:
                    self.orphaned(runner_id, fut.result())  # handed, never answered

    def can_take(self, runner_id: uuid.UUID) -> bool:
        """Whether a long-poll of that runner waits here now, unreserved: a claim made for it
        now would be handed over."""
        return any(t.free for t in self._takers.get(runner_id, ()))

    def reserve(self, runner_id: uuid.UUID) -> Handoff | None:
        """A long-poll of that runner waiting here now and not reserved yet, reserved for a
        claim the caller's transaction is about to make; None when there is none."""
        taker = next((t for t in self._takers.get(runner_id, ()) if t.free), None)
        return None if taker is None else Handoff(self, runner_id, taker)

    def orphaned(self, runner_id: uuid.UUID, claim: Any) -> None:
        if self.release_orphan is None:
            log.warning("handed_claim_lost", runner_id=str(runner_id))
            return
        self.release_orphan(runner_id, claim)

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
