"""LLM routing: filters with a named reason when nobody is left, then rank by outstanding
requests, latency EWMA (unknown = median of known, 50 ms bins), price and runner id."""

from __future__ import annotations

import math

import pytest

from parity.core.llm.routing import (
    NoRoute,
    NoRouteReason,
    PriceCap,
    RouteCounts,
    Routed,
    RunnerCandidate,
    rank_runners,
    route,
    update_latency_ewma,
)


def runner(
    runner_id: str,
    *,
    loaded: bool = True,
    online: bool = True,
    excluded: bool = False,
    outstanding: int = 0,
    max_concurrency: int = 4,
    latency: float | None = 100.0,
    price_in: int = 10,
    price_out: int = 20,
) -> RunnerCandidate:
    return RunnerCandidate(
        runner_id=runner_id,
        model_loaded=loaded,
        online=online,
        excluded=excluded,
        outstanding=outstanding,
        max_concurrency=max_concurrency,
        latency_ewma_ms=latency,
        input_price_per_1k=price_in,
        output_price_per_1k=price_out,
    )


CHOICES = [
    pytest.param([runner("a")], {}, "a", id="single-runner"),
    pytest.param(
        [runner("a", outstanding=2), runner("b", outstanding=1), runner("c", outstanding=3)],
        {}, "b", id="fewest-outstanding-wins",
    ),
    pytest.param(
        [runner("a", outstanding=1, latency=10, price_in=0, price_out=0), runner("b", latency=900)],
        {}, "b", id="outstanding-beats-latency-and-price",
    ),
    pytest.param(
        [runner("a", latency=400), runner("b", latency=120), runner("c", latency=300)],
        {}, "b", id="lower-latency-wins",
    ),
    pytest.param(
        [runner("a", latency=110, price_out=50), runner("b", latency=140, price_out=5)],
        {}, "b", id="same-latency-bin-price-decides",
    ),
    pytest.param(
        [runner("a", latency=110, price_out=50), runner("b", latency=140, price_out=5)],
        {"latency_resolution_ms": 0}, "a", id="exact-latency-without-bins",
    ),
    pytest.param(
        [runner("a", latency=100), runner("b", latency=None), runner("c", latency=500)],
        {}, "a", id="unknown-latency-counts-as-median-not-best",
    ),
    pytest.param(
        [runner("a", latency=None, price_in=30), runner("b", latency=None, price_in=5)],
        {}, "b", id="all-unknown-latency-price-decides",
    ),
    pytest.param(
        [runner("a", price_in=10, price_out=10), runner("b", price_in=1, price_out=30)],
        {}, "a", id="price-is-sum-of-per-1k-by-default",
    ),
    pytest.param(
        [runner("a", price_in=10, price_out=10), runner("b", price_in=1, price_out=30)],
        {"input_tokens": 2000, "output_tokens": 10}, "b",
        id="price-weighted-by-request-size",
    ),
    pytest.param(
        [runner("b"), runner("a"), runner("c")], {}, "a", id="tie-break-by-runner-id",
    ),
    pytest.param(
        [runner("a", online=False, latency=1), runner("b")], {}, "b", id="offline-skipped",
    ),
    pytest.param(
        [runner("a", loaded=False, latency=1), runner("b")], {}, "b", id="unloaded-skipped",
    ),
    pytest.param(
        [runner("a", excluded=True, latency=1), runner("b")], {}, "b", id="excluded-skipped",
    ),
    pytest.param(
        [runner("a", outstanding=4, max_concurrency=4, latency=1), runner("b", outstanding=3)],
        {}, "b", id="full-runner-skipped",
    ),
    pytest.param(
        [runner("a", price_out=100, latency=1), runner("b", price_out=40)],
        {"cap": PriceCap(output_per_1k=50)}, "b", id="output-cap-filters",
    ),
    pytest.param(
        [runner("a", price_in=100, latency=1), runner("b", price_in=40)],
        {"cap": PriceCap(input_per_1k=40)}, "b", id="input-cap-is-inclusive",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("candidates", "options", "expected"), CHOICES)
def test_route_chooses(candidates: list[RunnerCandidate], options: dict, expected: str) -> None:
    decision = route(candidates, **options)
    assert isinstance(decision, Routed), decision
    assert decision.runner_id == expected
    assert decision.ranked[0].runner_id == expected


REFUSALS = [
    pytest.param([], {}, NoRouteReason.MODEL_UNAVAILABLE, RouteCounts(0, 0, 0, 0), id="nobody"),
    pytest.param(
        [runner("a", loaded=False), runner("b", online=False)], {},
        NoRouteReason.MODEL_UNAVAILABLE, RouteCounts(0, 0, 0, 0), id="not-loaded-or-offline",
    ),
    pytest.param(
        [runner("a", excluded=True), runner("b", excluded=True)], {},
        NoRouteReason.ALL_EXCLUDED, RouteCounts(2, 0, 0, 0), id="all-excluded",
    ),
    pytest.param(
        [runner("a", price_in=20), runner("b", price_out=99), runner("c", excluded=True)],
        {"cap": PriceCap(input_per_1k=15, output_per_1k=50)},
        NoRouteReason.PRICE_ABOVE_CAP, RouteCounts(3, 2, 0, 0), id="all-above-cap",
    ),
    pytest.param(
        [runner("a", outstanding=1, max_concurrency=1),
         runner("b", outstanding=5, max_concurrency=2)],
        {}, NoRouteReason.AT_CAPACITY, RouteCounts(2, 2, 2, 0), id="all-full",
    ),
    pytest.param(
        [runner("a", max_concurrency=0)], {}, NoRouteReason.AT_CAPACITY, RouteCounts(1, 1, 1, 0),
        id="zero-concurrency-is-never-free",
    ),
    pytest.param(
        [runner("a", outstanding=1, max_concurrency=1), runner("b", price_in=99)],
        {"cap": PriceCap(input_per_1k=50)},
        NoRouteReason.AT_CAPACITY, RouteCounts(2, 2, 1, 0), id="affordable-ones-are-full",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("candidates", "options", "reason", "counts"), REFUSALS)
def test_route_refuses_with_reason(
    candidates: list[RunnerCandidate], options: dict, reason: NoRouteReason, counts: RouteCounts
) -> None:
    decision = route(candidates, **options)
    assert isinstance(decision, NoRoute)
    assert decision.reason is reason
    assert decision.counts == counts
    assert decision.message


def test_only_capacity_is_a_transient_reason() -> None:
    assert [r for r in NoRouteReason if r.transient] == [NoRouteReason.AT_CAPACITY]


def test_ranked_lists_every_eligible_runner_best_first() -> None:
    decision = route(
        [
            runner("slow", latency=900),
            runner("busy", outstanding=2),
            runner("fast", latency=50),
            runner("gone", online=False),
        ]
    )
    assert isinstance(decision, Routed)
    assert [c.runner_id for c in decision.ranked] == ["fast", "slow", "busy"]


def test_unknown_latency_ranks_between_fast_and_slow_runners() -> None:
    ranked = rank_runners(
        [runner("slow", latency=700), runner("new", latency=None), runner("fast", latency=100)]
    )
    assert [c.runner_id for c in ranked] == ["fast", "new", "slow"]


def test_ranking_ignores_input_order() -> None:
    pool = [runner(str(i), latency=float(i % 3) * 100, price_in=i % 5) for i in range(10)]
    forward = [c.runner_id for c in rank_runners(pool)]
    backward = [c.runner_id for c in rank_runners(list(reversed(pool)))]
    assert forward == backward


@pytest.mark.parametrize(
    ("field", "value"),
    [("outstanding", -1), ("max_concurrency", -1), ("input_price_per_1k", -5)],
)
def test_candidate_refuses_negative_values(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        RunnerCandidate(**_fields(field, value))


def _fields(field: str, value: int) -> dict:
    base = {
        "runner_id": "a",
        "model_loaded": True,
        "outstanding": 0,
        "max_concurrency": 1,
        "latency_ewma_ms": None,
        "input_price_per_1k": 0,
        "output_price_per_1k": 0,
    }
    base[field] = value
    return base


@pytest.mark.parametrize("latency", [-1.0, math.nan, math.inf])
def test_candidate_refuses_bad_latency(latency: float) -> None:
    with pytest.raises(ValueError, match="latency_ewma_ms"):
        runner("a", latency=latency)


def test_price_cap_refuses_negative_ceiling() -> None:
    with pytest.raises(ValueError, match=r"max_price\.output_per_1k"):
        PriceCap(output_per_1k=-1)


EWMA = [
    pytest.param(None, 250.0, 0.3, 250.0, id="first-sample-seeds"),
    pytest.param(100.0, 200.0, 0.3, 130.0, id="weighted-toward-previous"),
    pytest.param(100.0, 200.0, 1.0, 200.0, id="alpha-one-follows-sample"),
    pytest.param(100.0, 0.0, 0.5, 50.0, id="zero-sample"),
]


@pytest.mark.parametrize(("previous", "sample", "alpha", "expected"), EWMA)
def test_update_latency_ewma(
    previous: float | None, sample: float, alpha: float, expected: float
) -> None:
    assert update_latency_ewma(previous, sample, alpha=alpha) == pytest.approx(expected)


def test_ewma_converges_to_a_steady_latency() -> None:
    value: float | None = None
    for sample in [1000.0] + [200.0] * 40:
        value = update_latency_ewma(value, sample)
    assert value == pytest.approx(200.0, abs=0.1)


@pytest.mark.parametrize(
    ("sample", "alpha", "match"),
    [
        (-1.0, 0.3, "sample_ms"),
        (math.nan, 0.3, "sample_ms"),
        (1.0, 0.0, "alpha"),
        (1.0, 1.5, "alpha"),
    ],
)
def test_update_latency_ewma_refuses_bad_input(sample: float, alpha: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        update_latency_ewma(10.0, sample, alpha=alpha)
