"""Model aggregation across runners and the billing metrics (averages, nearest-rank p95,
per model and per period)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from parity.core.llm.aggregate import ModelOffer, aggregate_models
from parity.core.llm.metrics import (
    Period,
    PromptUsage,
    billing_metrics,
    nearest_rank_percentile,
    period_start,
    summarize,
)


def offer(runner: str, model: str = "llama3", loaded: bool = True, **kw: object) -> ModelOffer:
    return ModelOffer(runner_id=runner, model=model, loaded=loaded, **kw)  # type: ignore[arg-type]


def test_models_are_summarised_per_name_sorted() -> None:
    summaries = aggregate_models(
        [
            offer("r1", "qwen", input_price_per_1k=5, output_price_per_1k=9, context_length=8192),
            offer("r1", "llama3", input_price_per_1k=3, output_price_per_1k=7, quantization="Q4_0"),
            offer("r2", "llama3", input_price_per_1k=4, output_price_per_1k=6, context_length=4096,
                  quantization="Q8_0"),
            offer("r3", "llama3", loaded=False, input_price_per_1k=0, output_price_per_1k=0,
                  context_length=32768),
        ]
    )  # fmt: skip
    assert [s.model for s in summaries] == ["llama3", "qwen"]
    llama = summaries[0]
    assert (llama.runner_count, llama.loaded_runner_count, llama.loaded) == (3, 2, True)
    # Lowest prices among runners with it loaded: the unloaded free runner does not count.
    assert (llama.lowest_input_price_per_1k, llama.lowest_output_price_per_1k) == (3, 6)
    assert llama.max_context_length == 32768
    assert llama.quantizations == ("Q4_0", "Q8_0")
    qwen = summaries[1]
    assert (qwen.runner_count, qwen.max_context_length, qwen.max_output_tokens) == (1, 8192, None)


def test_model_loaded_nowhere_is_listed_with_the_prices_of_all_reports() -> None:
    [summary] = aggregate_models(
        [
            offer("r1", loaded=False, input_price_per_1k=8),
            offer("r2", loaded=False, input_price_per_1k=2),
        ]
    )
    assert not summary.loaded
    assert summary.runner_count == 2
    assert summary.lowest_input_price_per_1k == 2


def test_a_runner_reporting_a_model_twice_counts_once_loaded() -> None:
    [summary] = aggregate_models([offer("r1", loaded=False), offer("r1", loaded=True)])
    assert (summary.runner_count, summary.loaded_runner_count) == (1, 1)


def test_no_reports_no_models() -> None:
    assert aggregate_models([]) == []


PERCENTILES = [
    pytest.param([], 95, None, id="empty"),
    pytest.param([42.0], 95, 42.0, id="one-value"),
    pytest.param([float(i) for i in range(1, 21)], 95, 19.0, id="twenty-values-rank-19"),
    pytest.param([float(i) for i in range(1, 101)], 95, 95.0, id="hundred-values"),
    pytest.param([5.0, 1.0, 3.0], 50, 3.0, id="unsorted-median"),
    pytest.param([5.0, 1.0, 3.0], 100, 5.0, id="max"),
]


@pytest.mark.parametrize(("values", "pct", "expected"), PERCENTILES)
def test_nearest_rank_percentile(values: list[float], pct: float, expected: float | None) -> None:
    assert nearest_rank_percentile(values, pct) == expected


def test_percentile_refuses_out_of_range() -> None:
    with pytest.raises(ValueError, match="percentile"):
        nearest_rank_percentile([1.0], 0)


T0 = datetime(2026, 3, 4, 15, 42, 7, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        (Period.HOUR, datetime(2026, 3, 4, 15, tzinfo=UTC)),
        (Period.DAY, datetime(2026, 3, 4, tzinfo=UTC)),
        (Period.WEEK, datetime(2026, 3, 2, tzinfo=UTC)),
        (Period.MONTH, datetime(2026, 3, 1, tzinfo=UTC)),
    ],
)
def test_period_start(period: Period, expected: datetime) -> None:
    assert period_start(T0, period) == expected


def test_period_start_converts_to_utc_first() -> None:
    local = datetime(2026, 3, 5, 1, 0, tzinfo=timezone(timedelta(hours=3)))  # 22:00 UTC on 4th
    assert period_start(local, Period.DAY) == datetime(2026, 3, 4, tzinfo=UTC)


def test_period_start_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        period_start(datetime(2026, 1, 1), Period.DAY)


def usage(model: str, hours: int, cost: int, latency: float | None) -> PromptUsage:
    return PromptUsage(
        model=model,
        created_at=T0 + timedelta(hours=hours),
        input_tokens=10,
        output_tokens=20,
        cost=cost,
        latency_ms=latency,
    )


def test_billing_metrics_by_model_and_period() -> None:
    rows = [
        usage("a", 0, 5, 100.0),
        usage("b", 0, 7, 300.0),
        usage("a", 1, 11, None),  # failed: counted, but no latency
        usage("a", 30, 13, 200.0),
    ]
    metrics = billing_metrics(rows, Period.DAY)
    assert metrics.total.requests == 4
    assert (metrics.total.input_tokens, metrics.total.output_tokens) == (40, 80)
    assert metrics.total.cost == 36
    assert metrics.total.average_latency_ms == pytest.approx(200.0)
    assert metrics.total.p95_latency_ms == 300.0
    assert list(metrics.by_model) == ["a", "b"]
    assert metrics.by_model["a"].requests == 3
    assert metrics.by_model["a"].cost == 29
    assert metrics.by_model["a"].average_latency_ms == pytest.approx(150.0)
    assert [start for start, _ in metrics.by_period] == [
        datetime(2026, 3, 4, tzinfo=UTC),
        datetime(2026, 3, 5, tzinfo=UTC),
    ]
    assert [t.requests for _, t in metrics.by_period] == [3, 1]


def test_summary_without_latencies_has_none() -> None:
    totals = summarize([usage("a", 0, 1, None)])
    assert totals.average_latency_ms is None and totals.p95_latency_ms is None
    assert summarize([]).requests == 0
