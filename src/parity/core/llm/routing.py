"""Choosing a runner for a prompt (ARCHITECTURE §4 "LLM routing") and the latency EWMA.

Filter, then rank:

1. **Filter**, in this order, remembering why each runner dropped out:
   online with the model loaded → not excluded (a runner that already failed this prompt) →
   within the client's price cap → below its concurrency limit
   (``outstanding < max_concurrency``). The first filter that leaves nobody names the
   :class:`NoRouteReason`, so the API can say "no runner serves this model" apart from "every
   runner is busy" (retry later) and "every runner costs more than your cap".
2. **Rank** the survivors by, in turn:
   - outstanding requests (fewest first);
   - latency EWMA, compared in bins of ``latency_resolution_ms`` (default 50 ms) so runners
     that are about as fast are separated by price instead of by noise. A runner with no
     latency yet counts as the **median** of the known EWMAs among the survivors (neither
     favoured nor starved, so new runners get traffic and earn a measurement); with no known
     EWMA at all, latency does not separate anyone;
   - price of this request at the runner:
     ``input_tokens * input_per_1k + output_tokens * output_per_1k`` (weights default to 1 and
     1, i.e. the sum of the two per-1k prices);
   - runner id (a stable tie-break: the same state always gives the same choice).

**Price cap rule.** A :class:`PriceCap` holds an optional ceiling per direction, in base
units per 1,000 tokens; a runner passes when each of its prices is ≤ the ceiling given for
that direction (an absent ceiling does not constrain). Per-direction ceilings are what a client
can state before knowing how long the answer will be.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DEFAULT_EWMA_ALPHA",
    "DEFAULT_LATENCY_RESOLUTION_MS",
    "NoRoute",
    "NoRouteReason",
    "PriceCap",
    "RouteCounts",
    "Routed",
    "RunnerCandidate",
    "rank_runners",
    "route",
    "update_latency_ewma",
]

DEFAULT_LATENCY_RESOLUTION_MS = 50.0
DEFAULT_EWMA_ALPHA = 0.3


@dataclass(frozen=True, slots=True)
class RunnerCandidate:
    """A runner as routing sees it, for one model.

    Prices are integer base units per 1,000 tokens. ``latency_ewma_ms`` is None until the
    runner has served a request of this model.
    """

    runner_id: str
    model_loaded: bool
    outstanding: int
    max_concurrency: int
    latency_ewma_ms: float | None
    input_price_per_1k: int
    output_price_per_1k: int
    online: bool = True
    excluded: bool = False

    def __post_init__(self) -> None:
        for name in ("outstanding", "max_concurrency", "input_price_per_1k", "output_price_per_1k"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        ewma = self.latency_ewma_ms
        if ewma is not None and not (math.isfinite(ewma) and ewma >= 0):
            raise ValueError(f"latency_ewma_ms must be a finite number >= 0, got {ewma}")

    @property
    def has_room(self) -> bool:
        return self.outstanding < self.max_concurrency


@dataclass(frozen=True, slots=True)
class PriceCap:
    """The most a client will pay per 1,000 tokens, per direction (None: no ceiling)."""

    input_per_1k: int | None = None
    output_per_1k: int | None = None

    def __post_init__(self) -> None:
        for name in ("input_per_1k", "output_per_1k"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"max_price.{name} must be >= 0, got {value}")

    def allows(self, candidate: RunnerCandidate) -> bool:
        return (
            self.input_per_1k is None or candidate.input_price_per_1k <= self.input_per_1k
        ) and (self.output_per_1k is None or candidate.output_price_per_1k <= self.output_per_1k)


class NoRouteReason(StrEnum):
    """Why no runner was chosen; the first filter that left nobody."""

    MODEL_UNAVAILABLE = "model_unavailable"  # no online runner has the model loaded
    ALL_EXCLUDED = "all_runners_excluded"  # every such runner already failed this prompt
    PRICE_ABOVE_CAP = "price_above_cap"  # every remaining runner costs more than the cap
    AT_CAPACITY = "at_capacity"  # every remaining runner is at its concurrency limit

    @property
    def transient(self) -> bool:
        """Capacity frees up by itself; the other reasons need a runner to come or change."""
        return self is NoRouteReason.AT_CAPACITY


@dataclass(frozen=True, slots=True)
class RouteCounts:
    """How many candidates passed each filter (for the error's details)."""

    serving: int  # online with the model loaded
    not_excluded: int
    within_cap: int
    with_room: int


@dataclass(frozen=True, slots=True)
class Routed:
    """The chosen runner, and every eligible runner in rank order (the choice first), so a
    caller that loses a race for the first can try the next without routing again."""

    runner_id: str
    ranked: tuple[RunnerCandidate, ...]


@dataclass(frozen=True, slots=True)
class NoRoute:
    reason: NoRouteReason
    counts: RouteCounts

    @property
    def message(self) -> str:
        return _MESSAGES[self.reason]


_MESSAGES = {
    NoRouteReason.MODEL_UNAVAILABLE: "no online runner has this model loaded",
    NoRouteReason.ALL_EXCLUDED: "every runner serving this model has already failed this prompt",
    NoRouteReason.PRICE_ABOVE_CAP: "every runner serving this model is above the price cap",
    NoRouteReason.AT_CAPACITY: "every runner serving this model is at its concurrency limit",
}


def route(
    candidates: Iterable[RunnerCandidate],
    *,
    cap: PriceCap | None = None,
    input_tokens: int = 1,
    output_tokens: int = 1,
    latency_resolution_ms: float = DEFAULT_LATENCY_RESOLUTION_MS,
) -> Routed | NoRoute:
    """Choose a runner for one prompt (see the module docstring for the rules).

    ``input_tokens`` / ``output_tokens`` weight the two prices when ranking by price (e.g. the
    prompt's token estimate and its ``max_tokens``).
    """
    serving = [c for c in candidates if c.online and c.model_loaded]
    allowed = [c for c in serving if not c.excluded]
    affordable = [c for c in allowed if cap is None or cap.allows(c)]
    with_room = [c for c in affordable if c.has_room]
    counts = RouteCounts(len(serving), len(allowed), len(affordable), len(with_room))
    if not serving:
        return NoRoute(NoRouteReason.MODEL_UNAVAILABLE, counts)
    if not allowed:
        return NoRoute(NoRouteReason.ALL_EXCLUDED, counts)
    if not affordable:
        return NoRoute(NoRouteReason.PRICE_ABOVE_CAP, counts)
    if not with_room:
        return NoRoute(NoRouteReason.AT_CAPACITY, counts)
    ranked = rank_runners(
        with_room,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        latency_resolution_ms=latency_resolution_ms,
    )
    return Routed(runner_id=ranked[0].runner_id, ranked=tuple(ranked))


def rank_runners(
    eligible: Iterable[RunnerCandidate],
    *,
    input_tokens: int = 1,
    output_tokens: int = 1,
    latency_resolution_ms: float = DEFAULT_LATENCY_RESOLUTION_MS,
) -> list[RunnerCandidate]:
    """Order already-filtered runners, best first (no filtering here)."""
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError("input_tokens and output_tokens must be >= 0")
    pool = list(eligible)
    known = [c.latency_ewma_ms for c in pool if c.latency_ewma_ms is not None]
    unknown_as = statistics.median(known) if known else 0.0

    def key(c: RunnerCandidate) -> tuple[int, float, int, str]:
        latency = unknown_as if c.latency_ewma_ms is None else c.latency_ewma_ms
        if latency_resolution_ms > 0:
            latency = math.floor(latency / latency_resolution_ms)
        price = input_tokens * c.input_price_per_1k + output_tokens * c.output_price_per_1k
        return (c.outstanding, latency, price, c.runner_id)

    return sorted(pool, key=key)


def update_latency_ewma(
    previous_ms: float | None, sample_ms: float, *, alpha: float = DEFAULT_EWMA_ALPHA
) -> float:
    """Exponentially weighted moving average: ``alpha * sample + (1 - alpha) * previous``.

    The first sample seeds the average. A request that failed or timed out should be fed as
    its elapsed time (at least the timeout), so a slow or hanging runner ranks worse.
    ``alpha`` in (0, 1]: higher follows recent samples faster.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if not (math.isfinite(sample_ms) and sample_ms >= 0):
        raise ValueError(f"sample_ms must be a finite number >= 0, got {sample_ms}")
    if previous_ms is None:
        return float(sample_ms)
    return alpha * sample_ms + (1 - alpha) * previous_ms
