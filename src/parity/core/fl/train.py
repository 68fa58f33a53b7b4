"""Local training of the reference models: minibatch SGD on softmax cross-entropy.

For ``local_epochs`` epochs the participant's rows are visited in a fresh seeded permutation,
``batch_size`` at a time (the last batch of an epoch may be short), and every weight takes the
step ``w <- w - learning_rate * (dL/dw + mu * (w - w_global))``. The second term is FedProx's
proximal term (Li et al. 2020, "Federated Optimization in Heterogeneous Networks": the local
objective is ``L(w) + mu/2 * ||w - w_global||^2``); ``mu = 0`` is plain FedAvg training.

The same (model, data, config, seed) always gives the same weights: the only randomness is the
``numpy.random.default_rng(seed)`` permutation per epoch.

A thread cannot be interrupted, so a caller that may give up on the training (a runner whose
task was cancelled, or which is shutting down) passes ``stop``: it is asked before every batch,
and once it answers True the training ends with :class:`TrainingStopped` instead of running its
remaining epochs for nobody.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from parity.core.fl._params import read_float, read_int
from parity.core.fl.aggregation import Weights, as_float32, check_same_layout
from parity.core.fl.errors import AggregationError, ModelError
from parity.core.fl.model import ModelSpec, evaluate, forward

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingStopped",
    "batches",
    "check_dataset",
    "check_inputs",
    "finish",
    "parse_train_config",
    "train_local",
]

MAX_EPOCHS = 1_000
MAX_BATCH_SIZE = 1_000_000


class TrainingStopped(Exception):
    """The caller's ``stop`` asked :func:`train_local` to give up before it finished."""


@dataclass(frozen=True)
class TrainConfig:
    """Local training settings a round's task carries to a runner."""

    learning_rate: float
    batch_size: int
    local_epochs: int
    mu: float = 0.0


def parse_train_config(config: Mapping[str, Any], *, mu: Any = None) -> TrainConfig:
    """Validate ``learning_rate``, ``batch_size`` and ``local_epochs`` (all required, no
    defaults) and an optional FedProx ``mu``; errors name the field."""

    def required(key: str) -> Any:
        if config.get(key) is None:
            raise ModelError(key, f"{key} is required")
        return config[key]

    learning_rate = read_float(
        required("learning_rate"), "learning_rate", ModelError, minimum=0.0, min_exclusive=True
    )
    batch_size = read_int(
        required("batch_size"), "batch_size", ModelError, minimum=1, maximum=MAX_BATCH_SIZE
    )
    local_epochs = read_int(
        required("local_epochs"), "local_epochs", ModelError, minimum=1, maximum=MAX_EPOCHS
    )
    proximal = 0.0 if mu is None else read_float(mu, "mu", ModelError, minimum=0.0)
    return TrainConfig(learning_rate, batch_size, local_epochs, proximal)


def check_dataset(
    spec: ModelSpec, x: ArrayLike, y: ArrayLike
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Features as float32 ``[rows, input_size]`` and labels as int64 in ``0..output_size-1``,
    or an error naming what does not fit the model."""
    features = np.asarray(x, dtype=np.float32)
    labels = np.asarray(y)
    if features.ndim != 2 or features.shape[1] != spec.input_size:
        raise ModelError(
            "features",
            f"features have shape {list(features.shape)}; the model needs [rows, "
            f"{spec.input_size}]",
        )
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ModelError("labels", f"{labels.shape[0]} labels for {features.shape[0]} rows")
    if features.shape[0] == 0:
        raise ModelError("features", "no rows to train on")
    if not np.isfinite(features).all():
        raise ModelError("features", "features contain NaN or infinity")
    if labels.dtype.kind not in "iu" and not (
        labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)
    ):
        raise ModelError("labels", "labels must be integer class ids")
    as_int = labels.astype(np.int64)
    if as_int.min() < 0 or as_int.max() >= spec.output_size:
        raise ModelError(
            "labels", f"labels must lie in 0..{spec.output_size - 1} (the model's output_size)"
        )
    return features, as_int


@dataclass(frozen=True)
class TrainResult:
    """The trained weights, the rows trained on, the trained model's loss and accuracy on
    those rows, and the number of SGD steps taken."""

    weights: Weights
    num_examples: int
    loss: float
    accuracy: float
    steps: int


def _gradients(
    spec: ModelSpec,
    weights: Mapping[str, NDArray[np.float32]],
    x: NDArray[np.float32],
    y: NDArray[np.int64],
) -> dict[str, NDArray[np.float32]]:
    """Gradients of the mean softmax cross-entropy over the batch (backpropagation)."""
    activations, logits = forward(spec, weights, x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    probs[np.arange(y.shape[0]), y] -= 1.0
    delta = probs / np.float32(y.shape[0])
    grads: dict[str, NDArray[np.float32]] = {}
    for i in range(spec.num_layers, 0, -1):
        below = activations[i - 1]
        grads[f"fc{i}.weight"] = delta.T @ below
        grads[f"fc{i}.bias"] = delta.sum(axis=0)
        if i > 1:
            # ReLU passes the gradient only where its output (the activation below) is positive.
            delta = (delta @ weights[f"fc{i}.weight"]) * (below > 0)
    return grads


def train_local(
    spec: ModelSpec,
    global_weights: Mapping[str, NDArray[Any]],
    x: ArrayLike,
    y: ArrayLike,
    config: TrainConfig,
    seed: int,
    stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train from ``global_weights`` on ``(x, y)``; the inputs are not modified. ``stop``, when
    given, is asked before each batch: True ends the training with :class:`TrainingStopped`."""
    features, labels = check_inputs(spec, global_weights, x, y)
    start = as_float32(global_weights)
    weights = as_float32(global_weights)
    lr, mu = np.float32(config.learning_rate), np.float32(config.mu)
    steps = 0
    for batch in batches(features.shape[0], config, seed):
        if stop is not None and stop():
            raise TrainingStopped(f"training stopped after {steps} steps")
        grads = _gradients(spec, weights, features[batch], labels[batch])
        for name, grad in grads.items():
            if mu:
                grad = grad + mu * (weights[name] - start[name])
            weights[name] -= lr * grad
        steps += 1
    return finish(spec, weights, features, labels, steps)


def check_inputs(
    spec: ModelSpec, global_weights: Mapping[str, NDArray[Any]], x: ArrayLike, y: ArrayLike
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """What every trainer checks first: the global model has the spec's tensors and shapes,
    and the data fits the model (:func:`check_dataset`); errors name what does not fit."""
    expected = {name: np.empty(shape, np.float32) for name, shape in spec.shapes().items()}
    try:
        check_same_layout(expected, global_weights, "the global model")
    except AggregationError as exc:
        raise ModelError(exc.field, exc.reason) from exc
    return check_dataset(spec, x, y)


def batches(rows: int, config: TrainConfig, seed: int) -> Iterator[NDArray[np.int64]]:
    """The row indices of each SGD step, in order: per epoch a fresh permutation of
    ``numpy.random.default_rng(seed)``, ``batch_size`` at a time (the last may be short).
    Every trainer visits the rows in this order, so they compute the same steps."""
    rng = np.random.default_rng(seed)
    for _ in range(config.local_epochs):
        order = rng.permutation(rows)
        for begin in range(0, rows, config.batch_size):
            yield order[begin : begin + config.batch_size]


def finish(
    spec: ModelSpec,
    weights: Weights,
    features: NDArray[np.float32],
    labels: NDArray[np.int64],
    steps: int,
) -> TrainResult:
    """The result of a training: its weights with their loss and accuracy on its rows."""
    result = evaluate(spec, weights, features, labels)
    return TrainResult(weights, features.shape[0], result.loss, result.accuracy, steps)
