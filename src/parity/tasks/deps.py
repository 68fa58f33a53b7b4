"""What the task services need, built once from settings by the container."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from parity.clock import Clock
from parity.core.tasks.retry import RetryPolicy
from parity.events.service import EventDeps
from parity.ledger.deps import LedgerDeps
from parity.tasks.wakeups import WakeHub

# What a claim of one task type carries beyond the task row: given the task's config, the
# config to answer with (the domain that owns the type supplies it; see Container).
ClaimAnswer = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class TaskDeps:
    clock: Clock
    random_bytes: Callable[[int], bytes]
    wakeups: WakeHub
    lease_seconds: float
    offer_seconds: float
    retry: RetryPolicy
    log_max_bytes: int
    output_inline_max_bytes: int
    max_pending_per_client: int
    max_pending_total: int
    events: EventDeps
    ledger: LedgerDeps | None = None  # pricing/escrow; None in unit tests that need none

    def rand(self) -> float:
        """A float in [0, 1) from the injected random source (for jitter)."""
        return int.from_bytes(self.random_bytes(4), "big") / 2**32


class OnTaskRows:
    """For the deps of a domain whose work rides on task rows (prompts, FL rounds): the clock
    and the ledger are the queue's, and its work is priced when the queue's is."""

    tasks: TaskDeps

    @property
    def clock(self) -> Clock:
        return self.tasks.clock

    @property
    def ledger(self) -> LedgerDeps | None:
        return self.tasks.ledger

    @property
    def priced(self) -> bool:
        """Work is billed (escrow, postings) when the server prices work (PRICE_*)."""
        return self.tasks.ledger is not None and self.tasks.ledger.pricing_enabled
