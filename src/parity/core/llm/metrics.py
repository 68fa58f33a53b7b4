"""Billing metrics of a caller's prompts (``GET /api/llm/billing/metrics``), from plain rows.

Latency statistics use only prompts that have a latency (finished ones). The 95th percentile
is the **nearest-rank** percentile: the value at rank ``ceil(0.95 * n)`` of the sorted
latencies, so it is always an observed latency (p95 of one value is that value).

Periods are UTC calendar buckets: ``hour``, ``day``, ``week`` (ISO weeks, starting Monday)
and ``month``; a row falls in the bucket that contains its ``created_at``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

__all__ = [
    "BillingMetrics",
    "Period",
    "PromptUsage",
    "UsageTotals",
    "billing_metrics",
    "nearest_rank_percentile",
    "period_start",
    "summarize",
]


class Period(StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """One prompt as billing sees it. ``created_at`` must be timezone-aware."""

    model: str
    created_at: datetime
    input_tokens: int
    output_tokens: int
    cost: int
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class UsageTotals:
    requests: int
    input_tokens: int
    output_tokens: int
    cost: int
    average_latency_ms: float | None
    p95_latency_ms: float | None


@dataclass(frozen=True, slots=True)
class BillingMetrics:
    total: UsageTotals
    by_model: dict[str, UsageTotals]
    by_period: list[tuple[datetime, UsageTotals]]  # oldest bucket first


def nearest_rank_percentile(values: Sequence[float], percentile: float) -> float | None:
    """The nearest-rank percentile (``0 < percentile ≤ 100``); None for no values."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(percentile / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def summarize(rows: Iterable[PromptUsage]) -> UsageTotals:
    """Totals, average and p95 latency of some rows."""
    items = list(rows)
    latencies = [r.latency_ms for r in items if r.latency_ms is not None]
    return UsageTotals(
        requests=len(items),
        input_tokens=sum(r.input_tokens for r in items),
        output_tokens=sum(r.output_tokens for r in items),
        cost=sum(r.cost for r in items),
        average_latency_ms=sum(latencies) / len(latencies) if latencies else None,
        p95_latency_ms=nearest_rank_percentile(latencies, 95),
    )


def period_start(moment: datetime, period: Period) -> datetime:
    """The UTC start of the bucket containing ``moment`` (which must be timezone-aware)."""
    if moment.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    utc = moment.astimezone(UTC)
    if period is Period.HOUR:
        return utc.replace(minute=0, second=0, microsecond=0)
    day = utc.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.DAY:
        return day
    if period is Period.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def billing_metrics(rows: Iterable[PromptUsage], period: Period) -> BillingMetrics:
    """Totals overall, per model (keys sorted) and per ``period`` bucket (oldest first)."""
    items = list(rows)
    models: dict[str, list[PromptUsage]] = {}
    buckets: dict[datetime, list[PromptUsage]] = {}
    for row in items:
        models.setdefault(row.model, []).append(row)
        buckets.setdefault(period_start(row.created_at, period), []).append(row)
    return BillingMetrics(
        total=summarize(items),
        by_model={m: summarize(models[m]) for m in sorted(models)},
        by_period=[(start, summarize(buckets[start])) for start in sorted(buckets)],
    )
