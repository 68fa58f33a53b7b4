"""FL aggregators: FedAvg's weighted mean, order invariance, identical updates, robustness to an
outlier, the adaptive server optimisers against the paper's equations, and the registry's
validation messages."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from parity.core.fl.aggregation import ClientUpdate, WeightedSum, fedavg
from parity.core.fl.aggregators import (
    AGGREGATORS,
    ALIASES,
    MethodConfig,
    aggregate,
    aggregate_mean,
    parse_method,
)
from parity.core.fl.errors import AggregationError
from parity.core.fl.fedopt import ServerOptState
from parity.core.fl.robust import krum, krum_scores

SHAPES = {"fc1.weight": (4, 3), "fc1.bias": (4,), "fc2.weight": (2, 4), "fc2.bias": (2,)}

PARAMS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedprox": {"mu": 0.1},
    "fedadagrad": {"eta": 0.1, "beta_1": 0.0, "tau": 1e-3},
    "fedadam": {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "fedyogi": {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "fedmedian": {},
    "trimmed_mean": {"beta": 0.2},
    "krum": {"num_malicious": 1},
    "multi_krum": {"num_malicious": 1, "num_selected": 3},
}


def model(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        name: (rng.standard_normal(shape) * scale).astype(np.float32)
        for name, shape in SHAPES.items()
    }


def near(base: dict[str, np.ndarray], rng: np.random.Generator, spread: float) -> dict[str, Any]:
    return {
        name: (a + rng.standard_normal(a.shape) * spread).astype(np.float32)
        for name, a in base.items()
    }


def updates_around(seed: int, count: int = 7) -> tuple[dict[str, Any], list[ClientUpdate]]:
    rng = np.random.default_rng(seed)
    global_model = model(rng)
    return global_model, [
        ClientUpdate(near(global_model, rng, 0.1), int(rng.integers(5, 200))) for _ in range(count)
    ]


def config(method: str) -> MethodConfig:
    return parse_method(method, PARAMS[method])


def assert_models_close(a: dict[str, Any], b: dict[str, Any], **tol: float) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == np.float32
        np.testing.assert_allclose(a[name], b[name], **({"rtol": 1e-6, "atol": 1e-7} | tol))


def test_every_registered_method_has_test_parameters() -> None:
    assert set(PARAMS) == set(AGGREGATORS)


def test_fedavg_is_the_example_weighted_mean() -> None:
    _, updates = updates_around(1)
    total = sum(u.num_examples for u in updates)
    expected = {
        name: sum(u.weights[name].astype(np.float64) * u.num_examples for u in updates) / total
        for name in SHAPES
    }
    assert_models_close(fedavg(updates), expected)


def test_weighted_sum_streams_and_keeps_no_reference_to_the_updates() -> None:
    _, updates = updates_around(2)
    accumulator = WeightedSum()
    for weights, n in updates:
        copy = {k: v.copy() for k, v in weights.items()}
        accumulator.add(copy, n)
        for array in copy.values():
            array[...] = 1e9  # a caller reusing its buffer must not change the sum
    assert accumulator.count == len(updates)
    assert accumulator.total_examples == sum(n for _, n in updates)
    assert_models_close(accumulator.mean(), fedavg(updates))


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_aggregation_does_not_depend_on_update_order(method: str) -> None:
    global_model, updates = updates_around(3, count=5)
    reference = aggregate(config(method), global_model, updates).weights
    for order in itertools.islice(itertools.permutations(range(5)), 1, 30, 7):
        shuffled = [updates[i] for i in order]
        assert_models_close(aggregate(config(method), global_model, shuffled).weights, reference)


@pytest.mark.parametrize(
    "method", ["fedavg", "fedprox", "fedmedian", "trimmed_mean", "krum", "multi_krum"]
)
def test_identical_updates_give_that_model(method: str) -> None:
    rng = np.random.default_rng(4)
    global_model, same = model(rng), model(rng)
    updates = [ClientUpdate(same, n) for n in (3, 10, 50, 7, 1)]
    assert_models_close(aggregate(config(method), global_model, updates).weights, same)


@pytest.mark.parametrize("method", ["fedadagrad", "fedadam", "fedyogi"])
def test_server_optimisers_keep_the_model_when_every_update_is_the_model(method: str) -> None:
    rng = np.random.default_rng(5)
    global_model = model(rng)
    updates = [ClientUpdate(global_model, n) for n in (3, 10, 50)]
    state = None
    for _ in range(3):
        result = aggregate(config(method), global_model, updates, state)
        state = result.state
        assert_models_close(result.weights, global_model)


@pytest.mark.parametrize(
    ("method", "resists"),
    [
        ("fedavg", False),
        ("fedmedian", True),
        ("trimmed_mean", True),
        ("krum", True),
        ("multi_krum", True),
    ],
)
def test_robust_methods_resist_one_large_outlier(method: str, resists: bool) -> None:
    rng = np.random.default_rng(6)
    honest_center = model(rng)
    honest = [ClientUpdate(near(honest_center, rng, 0.01), 100) for _ in range(9)]
    attacker = ClientUpdate({k: v * 0 + 1e4 for k, v in honest_center.items()}, 100)
    updates = [*honest[:4], attacker, *honest[4:]]
    result = aggregate(config(method), honest_center, updates).weights
    worst = max(float(np.abs(result[n] - honest_center[n]).max()) for n in SHAPES)
    if resists:
        assert worst < 0.1
    else:
        assert worst > 100


def test_krum_selects_the_honest_updates() -> None:
    rng = np.random.default_rng(7)
    center = model(rng)
    updates = [ClientUpdate(near(center, rng, 0.01), 10) for _ in range(6)]
    updates.insert(2, ClientUpdate({k: v + 50 for k, v in center.items()}, 10))
    _, selected = krum(updates, num_malicious=1, num_selected=6)
    assert 2 not in selected and len(selected) == 6
    scores = krum_scores(updates, 1)
    assert int(np.argmax(scores)) == 2


def test_krum_refuses_more_work_than_the_cap() -> None:
    _, updates = updates_around(8, count=5)
    with pytest.raises(AggregationError) as caught:
        krum(updates, num_malicious=1, max_work=100)
    assert caught.value.field == "updates" and "cap" in caught.value.reason


def test_krum_needs_2f_plus_3_updates() -> None:
    _, updates = updates_around(9, count=4)
    with pytest.raises(AggregationError) as caught:
        krum(updates, num_malicious=1)
    assert caught.value.field == "num_malicious"


def test_trimmed_mean_drops_beta_n_from_each_side() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    updates = [ClientUpdate({"w": np.array([v], np.float32)}, 1) for v in values]
    result = aggregate(parse_method("trimmed_mean", {"beta": 0.2}), {"w": np.zeros(1)}, updates)
    assert result.weights["w"].tolist() == [3.0]  # drop 1.0 and 100.0


# --- FedAdagrad / FedAdam / FedYogi against the paper's equations --------------------------------


def reference_fedopt(
    method: str, p: dict[str, float], x0: np.ndarray, rounds: list[list[tuple[np.ndarray, int]]]
) -> list[np.ndarray]:
    """Reddi et al. 2021, Algorithm 2, element by element in plain Python floats."""
    eta, b1, b2, tau = p["eta"], p["beta_1"], p.get("beta_2", 0.0), p["tau"]
    x = [float(v) for v in x0]
    m = [0.0] * len(x)
    v = [tau * tau] * len(x)
    history = []
    for updates in rounds:
        total = sum(n for _, n in updates)
        for j in range(len(x)):
            mean = sum(float(w[j]) * n for w, n in updates) / total
            delta = mean - x[j]
            m[j] = b1 * m[j] + (1 - b1) * delta
            if method == "fedadagrad":
                v[j] = v[j] + delta**2
            elif method == "fedadam":
                v[j] = b2 * v[j] + (1 - b2) * delta**2
            else:
                sign = (v[j] > delta**2) - (v[j] < delta**2)
                v[j] = v[j] - (1 - b2) * delta**2 * sign
            x[j] = x[j] + eta * m[j] / (v[j] ** 0.5 + tau)
        history.append(np.array(x))
    return history


@pytest.mark.parametrize("method", ["fedadagrad", "fedadam", "fedyogi"])
def test_server_optimisers_match_the_paper_step_by_step(method: str) -> None:
    rng = np.random.default_rng(10)
    x0 = rng.standard_normal(12).astype(np.float32)
    rounds = [
        [
            ((x0 + rng.standard_normal(12) * s).astype(np.float32), int(rng.integers(1, 50)))
            for _ in range(4)
        ]
        for s in (0.5, 0.2, 1.0)
    ]
    params = dict(PARAMS[method])
    if method == "fedadagrad":
        params["beta_1"] = 0.5  # exercise the momentum term too
    expected = reference_fedopt(method, params, x0, rounds)
    cfg = parse_method(method, params)
    current = {"w": x0}
    state = None
    for r, updates in enumerate(rounds):
        result = aggregate(cfg, current, [ClientUpdate({"w": w}, n) for w, n in updates], state)
        # The reference stays in float64; ours rounds to float32 each round, hence rtol 1e-5.
        np.testing.assert_allclose(result.weights["w"], expected[r], rtol=1e-5, atol=1e-6)
        assert result.state is not None and result.state.steps == r + 1
        current, state = {"w": result.weights["w"]}, result.state
    assert not np.allclose(current["w"], x0)


def test_optimiser_state_round_trips_through_bytes() -> None:
    global_model, updates = updates_around(11)
    cfg = config("fedadam")
    first = aggregate(cfg, global_model, updates)
    assert first.state is not None
    restored = ServerOptState.from_bytes(first.state.to_bytes())
    assert restored.method == "fedadam" and restored.steps == 1
    straight = aggregate(cfg, first.weights, updates, first.state).weights
    resumed = aggregate(cfg, first.weights, updates, restored).weights
    assert_models_close(straight, resumed, rtol=0, atol=0)


def test_state_of_another_method_is_refused() -> None:
    global_model, updates = updates_around(12)
    state = aggregate(config("fedadam"), global_model, updates).state
    with pytest.raises(AggregationError) as caught:
        aggregate(config("fedyogi"), global_model, updates, state)
    assert caught.value.field == "state"


def test_unreadable_state_bytes_are_refused() -> None:
    with pytest.raises(AggregationError) as caught:
        ServerOptState.from_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00nope!")
    assert caught.value.field == "state"


def test_streaming_finish_equals_the_full_aggregation() -> None:
    global_model, updates = updates_around(13)
    for method in ("fedavg", "fedprox", "fedadam"):
        accumulator = WeightedSum()
        for weights, n in updates:
            accumulator.add(weights, n)
        streamed = aggregate_mean(config(method), global_model, accumulator.mean())
        assert_models_close(
            streamed.weights, aggregate(config(method), global_model, updates).weights
        )
    with pytest.raises(AggregationError):
        aggregate_mean(config("fedmedian"), global_model, accumulator.mean())


# --- registry and validation -------------------------------------------------------------------


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(AggregationError) as caught:
        parse_method("fedmagic", {})
    assert caught.value.field == "aggregation_method"
    assert caught.value.reason.startswith("unknown aggregation 'fedmagic'; valid: ")
    for name in (*AGGREGATORS, *ALIASES):
        assert name in caught.value.reason


def test_aliases_resolve() -> None:
    assert parse_method("federated_averaging", {}).method == "fedavg"
    assert parse_method("FedAvg", {}).method == "fedavg"


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("fedadam", {"beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}, "eta"),
        ("fedyogi", {"eta": 0.1, "beta_1": 0.9, "tau": 1e-3}, "beta_2"),
        ("fedadagrad", {"eta": 0.1, "tau": 1e-3}, "beta_1"),
        ("fedprox", {}, "mu"),
        ("trimmed_mean", {}, "beta"),
        ("krum", {}, "num_malicious"),
        ("multi_krum", {"num_malicious": 1}, "num_selected"),
    ],
)
def test_missing_parameter_is_named(method: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(AggregationError) as caught:
        parse_method(method, params)
    assert caught.value.field == field
    assert caught.value.reason == f"missing parameter {field!r} for {method} aggregation"


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("fedadam", PARAMS["fedadam"] | {"eta": float("nan")}, "eta"),
        ("fedadam", PARAMS["fedadam"] | {"eta": 0}, "eta"),
        ("fedadam", PARAMS["fedadam"] | {"beta_1": 1.0}, "beta_1"),
        ("fedadam", PARAMS["fedadam"] | {"tau": float("inf")}, "tau"),
        ("fedprox", {"mu": -1}, "mu"),
        ("trimmed_mean", {"beta": 0.5}, "beta"),
        ("krum", {"num_malicious": 1.5}, "num_malicious"),
        ("krum", {"num_malicious": True}, "num_malicious"),
        ("multi_krum", {"num_malicious": 0, "num_selected": 0}, "num_selected"),
    ],
)
def test_out_of_range_parameter_is_named(method: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(AggregationError) as caught:
        parse_method(method, params)
    assert caught.value.field == field


def test_krum_settings_too_many_for_min_participants_are_refused_at_creation() -> None:
    with pytest.raises(AggregationError) as caught:
        parse_method("krum", {"num_malicious": 2}, min_participants=6)
    assert caught.value.field == "num_malicious" and "at least 7" in caught.value.reason
    assert parse_method("krum", {"num_malicious": 2}, min_participants=7).method == "krum"


def test_update_with_a_wrong_shape_names_the_tensor() -> None:
    global_model, updates = updates_around(14)
    bad = dict(updates[3].weights)
    bad["fc2.weight"] = np.zeros((4, 2), np.float32)
    updates[3] = ClientUpdate(bad, 10)
    with pytest.raises(AggregationError) as caught:
        aggregate(config("fedavg"), global_model, updates)
    assert caught.value.field == "fc2.weight" and "update 3" in caught.value.reason


def test_update_without_examples_is_refused() -> None:
    global_model, updates = updates_around(15)
    updates[0] = ClientUpdate(updates[0].weights, 0)
    with pytest.raises(AggregationError) as caught:
        aggregate(config("fedavg"), global_model, updates)
    assert caught.value.field == "num_examples"


def test_no_updates_is_an_error_not_a_crash() -> None:
    global_model, _ = updates_around(16)
    for method in PARAMS:
        with pytest.raises(AggregationError):
            aggregate(config(method), global_model, [])
