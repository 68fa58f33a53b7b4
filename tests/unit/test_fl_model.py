"""The reference FL model and trainer: PyTorch-style tensor names, seeded init, correct
gradients, deterministic SGD with the FedProx term, and learning on scikit-learn's digits, alone
and in a 10-participant FedAvg simulation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from parity.core.fl.aggregators import aggregate, parse_method
from parity.core.fl.errors import ModelError
from parity.core.fl.model import evaluate, forward, init_weights, parse_model_spec, predict
from parity.core.fl.partitioning import parse_options, partition
from parity.core.fl.tensors import decode, encode
from parity.core.fl.train import (
    TrainConfig,
    TrainingStopped,
    _gradients,
    parse_train_config,
    train_local,
)

MLP = {"input_size": 64, "hidden_size": 32, "output_size": 10}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (no download), scaled to [0, 1], stratified 80/20."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=0.2, stratify=y, random_state=0
    )
    return x_train, y_train, x_test, y_test


def test_tensors_are_named_and_shaped_like_torch_linear_layers() -> None:
    spec = parse_model_spec(
        "neural_network", {**MLP, "hidden_size": None, "hidden_sizes": [32, 16]}
    )
    assert spec.shapes() == {
        "fc1.weight": (32, 64),
        "fc1.bias": (32,),
        "fc2.weight": (16, 32),
        "fc2.bias": (16,),
        "fc3.weight": (10, 16),
        "fc3.bias": (10,),
    }
    weights = init_weights(spec, 0)
    assert {n: a.shape for n, a in weights.items()} == spec.shapes()
    assert all(a.dtype == np.float32 for a in weights.values())


def test_logistic_regression_has_only_fc1() -> None:
    spec = parse_model_spec("logistic_regression", {"input_size": 4, "output_size": 3})
    assert spec.shapes() == {"fc1.weight": (3, 4), "fc1.bias": (3,)}


def test_init_is_seeded_with_zero_biases() -> None:
    spec = parse_model_spec("neural_network", MLP)
    a, b, c = init_weights(spec, 1), init_weights(spec, 1), init_weights(spec, 2)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["fc1.weight"], c["fc1.weight"])
    assert not a["fc1.bias"].any() and not a["fc2.bias"].any()
    # He init for the ReLU layer: std sqrt(2 / 64)
    assert abs(float(a["fc1.weight"].std()) - np.sqrt(2 / 64)) < 0.02


def test_forward_is_linear_relu_linear() -> None:
    spec = parse_model_spec("neural_network", {"input_size": 3, "hidden_size": 4, "output_size": 2})
    w = init_weights(spec, 3)
    w["fc1.bias"] = np.array([0.1, -0.2, 0.3, -5.0], np.float32)
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    hidden = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0)
    expected = hidden @ w["fc2.weight"].T + w["fc2.bias"]
    _, logits = forward(spec, w, x)
    np.testing.assert_allclose(logits, expected, rtol=1e-6)
    assert predict(spec, w, x).tolist() == expected.argmax(axis=1).tolist()


def test_gradients_match_finite_differences() -> None:
    spec = parse_model_spec(
        "neural_network", {"input_size": 5, "hidden_sizes": [6, 4], "output_size": 3}
    )
    rng = np.random.default_rng(4)
    weights = {n: a.astype(np.float64) for n, a in init_weights(spec, 4).items()}
    weights["fc1.bias"] += 0.1
    x = rng.standard_normal((8, 5))
    y = rng.integers(0, 3, 8)
    analytic = _gradients(spec, weights, x, y)  # type: ignore[arg-type]
    eps = 1e-6
    for name, array in weights.items():
        for index in list(np.ndindex(array.shape))[:6]:
            plus = {k: v.copy() for k, v in weights.items()}
            minus = {k: v.copy() for k, v in weights.items()}
            plus[name][index] += eps
            minus[name][index] -= eps
            numeric = (loss64(spec, plus, x, y) - loss64(spec, minus, x, y)) / (2 * eps)
            assert analytic[name][index] == pytest.approx(numeric, rel=1e-4, abs=1e-7), name


def loss64(spec: Any, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    a = x
    for i in range(1, spec.num_layers + 1):
        z = a @ weights[f"fc{i}.weight"].T + weights[f"fc{i}.bias"]
        a = z if i == spec.num_layers else np.maximum(z, 0)
    shifted = a - a.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(y)), y].mean())


def small_problem() -> tuple[Any, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    spec = parse_model_spec("neural_network", {"input_size": 6, "hidden_size": 8, "output_size": 3})
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    return spec, init_weights(spec, 5), x, y


def test_training_is_deterministic_for_a_seed_and_leaves_inputs_alone() -> None:
    spec, start, x, y = small_problem()
    before = {n: a.copy() for n, a in start.items()}
    config = TrainConfig(learning_rate=0.1, batch_size=8, local_epochs=3)
    a = train_local(spec, start, x, y, config, seed=1)
    b = train_local(spec, start, x, y, config, seed=1)
    c = train_local(spec, start, x, y, config, seed=2)
    assert all(np.array_equal(a.weights[n], b.weights[n]) for n in a.weights)
    assert not np.array_equal(a.weights["fc1.weight"], c.weights["fc1.weight"])
    assert all(np.array_equal(start[n], before[n]) for n in start)
    assert a.num_examples == 50 and a.steps == 3 * 7  # ceil(50 / 8) batches per epoch
    assert a.loss < evaluate(spec, start, x, y).loss


def test_fedprox_term_keeps_weights_closer_to_the_global_model() -> None:
    spec, start, x, y = small_problem()

    def drift(mu: float) -> float:
        result = train_local(spec, start, x, y, TrainConfig(0.1, 8, 5, mu=mu), seed=3)
        return sum(float(np.sum((result.weights[n] - start[n]) ** 2)) for n in start)

    assert drift(1.0) < 0.8 * drift(0.0)


@pytest.mark.parametrize(
    ("x_shape", "labels", "field"),
    [
        ((10, 5), [0] * 10, "features"),
        ((10, 6), [0] * 9, "labels"),
        ((10, 6), [0] * 9 + [3], "labels"),
        ((10, 6), [0] * 9 + [-1], "labels"),
        ((10, 6), [0.5] * 10, "labels"),
    ],
)
def test_training_data_that_does_not_fit_the_model_is_named(
    x_shape: tuple[int, int], labels: list[Any], field: str
) -> None:
    spec, start, _, _ = small_problem()
    with pytest.raises(ModelError) as caught:
        train_local(spec, start, np.zeros(x_shape), np.array(labels), TrainConfig(0.1, 4, 1), 0)
    assert caught.value.field == field


def test_nan_features_are_refused() -> None:
    spec, start, x, y = small_problem()
    x[3, 2] = np.nan
    with pytest.raises(ModelError) as caught:
        train_local(spec, start, x, y, TrainConfig(0.1, 4, 1), 0)
    assert caught.value.field == "features"


def test_a_global_model_of_another_shape_is_refused_naming_the_tensor() -> None:
    spec, start, x, y = small_problem()
    start["fc2.bias"] = np.zeros(4, np.float32)
    with pytest.raises(ModelError) as caught:
        train_local(spec, start, x, y, TrainConfig(0.1, 4, 1), 0)
    assert caught.value.field == "fc2.bias"


# --- configuration validation ------------------------------------------------------------------


def test_missing_model_config_is_the_readme_message() -> None:
    for empty in (None, {}):
        with pytest.raises(ModelError) as caught:
            parse_model_spec("neural_network", empty)
        assert caught.value.field == "model_config"
        assert caught.value.reason == (
            "model configuration is required - please provide model parameters"
        )


@pytest.mark.parametrize(
    ("model_type", "config", "field"),
    [
        ("transformer", MLP, "model_type"),
        ("neural_network", {"input_size": 64, "output_size": 10}, "model_config.hidden_sizes"),
        ("neural_network", {**MLP, "hidden_sizes": [8]}, "model_config.hidden_sizes"),
        (
            "neural_network",
            {**MLP, "hidden_size": None, "hidden_sizes": []},
            "model_config.hidden_sizes",
        ),
        (
            "neural_network",
            {**MLP, "hidden_size": None, "hidden_sizes": [8, 0]},
            "model_config.hidden_sizes[1]",
        ),
        ("neural_network", {**MLP, "input_size": 0}, "model_config.input_size"),
        ("neural_network", {**MLP, "input_size": float("nan")}, "model_config.input_size"),
        ("neural_network", {**MLP, "output_size": 1}, "model_config.output_size"),
        ("logistic_regression", {"input_size": 4}, "model_config.output_size"),
        (
            "neural_network",
            {"input_size": 60000, "hidden_size": 60000, "output_size": 10},
            "model_config",
        ),
    ],
)
def test_bad_model_config_names_the_field(
    model_type: str, config: dict[str, Any], field: str
) -> None:
    with pytest.raises(ModelError) as caught:
        parse_model_spec(model_type, config)
    assert caught.value.field == field


def test_train_config_requires_every_field() -> None:
    full = {"learning_rate": 0.1, "batch_size": 16, "local_epochs": 5}
    assert parse_train_config(full, mu=0.01) == TrainConfig(0.1, 16, 5, 0.01)
    for key in full:
        with pytest.raises(ModelError) as caught:
            parse_train_config({k: v for k, v in full.items() if k != key})
        assert caught.value.field == key
    for key, bad in (("learning_rate", float("inf")), ("batch_size", 0), ("local_epochs", 2.5)):
        with pytest.raises(ModelError) as caught:
            parse_train_config(full | {key: bad})
        assert caught.value.field == key


# --- learning on digits --------------------------------------------------------------------------


def test_centralized_mlp_learns_digits(digits: Any) -> None:
    x_train, y_train, x_test, y_test = digits
    spec = parse_model_spec("neural_network", MLP)
    result = train_local(
        spec,
        init_weights(spec, 0),
        x_train,
        y_train,
        TrainConfig(learning_rate=0.1, batch_size=16, local_epochs=20),
        seed=0,
    )
    assert evaluate(spec, result.weights, x_test, y_test).accuracy >= 0.95


def test_fedavg_over_ten_iid_participants_learns_digits(digits: Any) -> None:
    """Everything a round does, in process: partition, train from the global model, ship the
    update as safetensors bytes, aggregate."""
    x_train, y_train, x_test, y_test = digits
    spec = parse_model_spec("neural_network", MLP)
    parts = partition(parse_options("iid", {}, 10), 10, seed=0, labels=y_train)
    method = parse_method("fedavg", {})
    config = TrainConfig(learning_rate=0.1, batch_size=16, local_epochs=5)
    global_model = init_weights(spec, 0)
    accuracies = []
    for round_number in range(6):
        updates = []
        for i, rows in enumerate(parts):
            trained = train_local(
                spec,
                decode(encode(global_model)),
                x_train[rows],
                y_train[rows],
                config,
                seed=1000 * round_number + i,
            )
            updates.append((decode(encode(trained.weights)), trained.num_examples))
        global_model = aggregate(method, global_model, updates).weights
        accuracies.append(evaluate(spec, global_model, x_test, y_test).accuracy)
    assert accuracies[-1] >= 0.9
    assert accuracies[-1] > accuracies[0]


def test_training_asks_stop_before_every_batch_and_ends_when_it_answers_true() -> None:
    spec, start, x, y = small_problem()
    asked: list[int] = []

    def stop_after_five() -> bool:
        asked.append(1)
        return len(asked) > 5

    with pytest.raises(TrainingStopped):
        train_local(spec, start, x, y, TrainConfig(0.1, 8, 1000), 0, stop_after_five)
    assert len(asked) == 6  # five batches ran; the sixth was never started
    never = train_local(spec, start, x, y, TrainConfig(0.1, 8, 3), 1, lambda: False)
    assert never.steps == 3 * 7
