"""Retry policy for failed attempts: a pure, deterministic policy object (ARCHITECTURE §4).

``attempts`` is counted at claim, so after the first claim ``attempts_made == 1``. A failure
(``fail``, lease expiry, offline sweep) with attempts left puts the task back to ``pending`` with
``available_at = now + backoff``; otherwise the task is ``failed``, which is terminal.

Randomness is injected: callers pass ``rand`` drawn from ``[0, 1)`` so that the same inputs
always give the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from parity.core.tasks.states import TaskStatus

__all__ = ["RetryDecision", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do with a task after a failed attempt.

    ``final_status`` is the status the task moves to now: ``pending`` when it is retried
    (then ``available_at`` is set), ``failed`` when it is not (then ``available_at`` is None).
    """

    retry: bool
    available_at: datetime | None
    final_status: TaskStatus


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with bounded jitter.

    ``max_attempts`` is the default for tasks that do not set their own; every method that
    takes ``max_attempts`` uses this default when given None.
    """

    max_attempts: int = 3
    base_delay_seconds: float = 5.0
    max_delay_seconds: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        """Refuse settings that make no sense; each ValueError names its field."""
        _check_max_attempts(self.max_attempts)
        if self.base_delay_seconds < 0:
            raise ValueError(f"base_delay_seconds must be >= 0, got {self.base_delay_seconds}")
        if self.max_delay_seconds < 0:
            raise ValueError(f"max_delay_seconds must be >= 0, got {self.max_delay_seconds}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    def backoff_seconds(self, attempt: int, rand: float) -> float:
        """Delay before the retry that follows failed attempt number ``attempt`` (1-based).

        ``d = min(max_delay, base_delay * multiplier ** (attempt - 1))``, then jitter:
        ``d * (1 + jitter * (2 * rand - 1))``, i.e. uniformly within ``±jitter`` of ``d`` for
        ``rand`` uniform in ``[0, 1)``. Jitter is applied after the cap, so the result can exceed
        ``max_delay_seconds`` by at most the jitter fraction; it is never negative.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        _check_rand(rand)
        try:
            raw = self.base_delay_seconds * self.multiplier ** (attempt - 1)
        except OverflowError:  # the power overflowed a float: far past any cap
            raw = self.max_delay_seconds if self.base_delay_seconds > 0 else 0.0
        delay = min(self.max_delay_seconds, raw)
        return delay * (1.0 + self.jitter * (2.0 * rand - 1.0))

    def should_retry(self, attempts_made: int, max_attempts: int | None = None) -> bool:
        """True when attempts are left: ``attempts_made < max_attempts``."""
        limit = self.max_attempts if max_attempts is None else max_attempts
        _check_max_attempts(limit)
        if attempts_made < 0:
            raise ValueError(f"attempts_made must be >= 0, got {attempts_made}")
        return attempts_made < limit

    def decide_after_failure(
        self,
        attempts_made: int,
        max_attempts: int | None,
        now: datetime,
        rand: float,
    ) -> RetryDecision:
        """Retry (``pending``, ``available_at = now + backoff_seconds(attempts_made, rand)``)
        when :meth:`should_retry`, else ``failed`` with no ``available_at``.

        ``now`` must be timezone-aware; the result keeps its timezone.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        _check_rand(rand)
        if not self.should_retry(attempts_made, max_attempts):
            return RetryDecision(retry=False, available_at=None, final_status=TaskStatus.FAILED)
        # attempts_made >= 1 here unless no attempt was ever claimed; back off as after the first.
        delay = self.backoff_seconds(max(attempts_made, 1), rand)
        return RetryDecision(
            retry=True,
            available_at=now + timedelta(seconds=delay),
            final_status=TaskStatus.PENDING,
        )


def _check_max_attempts(max_attempts: int) -> None:
    """max_attempts counts every claim, the first included, so it is at least 1."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")


def _check_rand(rand: float) -> None:
    """rand is a uniform draw from [0, 1)."""
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand}")
