"""The reference FL models in numpy: a ReLU MLP and multinomial logistic regression.

``neural_network`` ``{input_size, hidden_size | hidden_sizes: [...], output_size}``: fully
connected layers ``fc1 .. fcL`` with ReLU between them and a softmax output.
``logistic_regression`` ``{input_size, output_size}``: one layer ``fc1`` with a softmax output
(only ``fc1.weight`` and ``fc1.bias`` exist).

Tensors are named and shaped as PyTorch's ``nn.Linear`` layers of the same network would be in
a ``state_dict``: ``fc{i}.weight`` is ``[out, in]`` and ``fc{i}.bias`` is ``[out]``, so
``y = x @ W.T + b``; a PyTorch runner with ``self.fc1 = nn.Linear(...)`` etc. exchanges the same
safetensors files. Everything is float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from parity.core.fl._params import read_int, read_list
from parity.core.fl.aggregation import Weights
from parity.core.fl.errors import ModelError

__all__ = [
    "MAX_LAYER_SIZE",
    "MAX_PARAMETERS",
    "MODEL_CONFIG_KEYS",
    "MODEL_TYPES",
    "Evaluation",
    "ModelSpec",
    "evaluate",
    "forward",
    "init_weights",
    "parse_model_spec",
    "predict",
]

MODEL_TYPES = ("neural_network", "logistic_regression")
# The ``model_config`` keys each model type takes: a session-create body naming any other is
# refused (:mod:`parity.fl.spec`); :func:`parse_model_spec` itself ignores them.
MODEL_CONFIG_KEYS: dict[str, frozenset[str]] = {
    "neural_network": frozenset(("input_size", "hidden_size", "hidden_sizes", "output_size")),
    "logistic_regression": frozenset(("input_size", "output_size")),
}
MAX_LAYER_SIZE = 65_536
MAX_PARAMETERS = 50_000_000  # 200 MB of float32: past that a model is no longer "reference"


@dataclass(frozen=True)
class ModelSpec:
    """A model's type and layer widths ``(input, hidden..., output)``."""

    model_type: str
    layer_sizes: tuple[int, ...]

    @property
    def input_size(self) -> int:
        return self.layer_sizes[0]

    @property
    def output_size(self) -> int:
        return self.layer_sizes[-1]

    @property
    def num_layers(self) -> int:
        return len(self.layer_sizes) - 1

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape in layer order: ``fc1.weight``, ``fc1.bias``, ``fc2.weight``..."""
        result: dict[str, tuple[int, ...]] = {}
        for i in range(self.num_layers):
            fan_in, fan_out = self.layer_sizes[i], self.layer_sizes[i + 1]
            result[f"fc{i + 1}.weight"] = (fan_out, fan_in)
            result[f"fc{i + 1}.bias"] = (fan_out,)
        return result

    @property
    def num_parameters(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes().values())


def parse_model_spec(model_type: Any, model_config: Mapping[str, Any] | None) -> ModelSpec:
    """Validate a session's ``model_type`` and ``model_config``; errors name the field
    (``model_type``, ``model_config.hidden_sizes[1]``...)."""
    if model_type not in MODEL_TYPES:
        raise ModelError(
            "model_type",
            f"unsupported model_type {model_type!r}; valid: {', '.join(MODEL_TYPES)}",
        )
    if not model_config:
        raise ModelError(
            "model_config", "model configuration is required - please provide model parameters"
        )
    if not isinstance(model_config, Mapping):
        raise ModelError("model_config", "model_config must be an object")

    def size(key: str, value: Any, minimum: int = 1) -> int:
        if value is None:
            raise ModelError(f"model_config.{key}", f"model_config.{key} is required")
        return read_int(
            value, f"model_config.{key}", ModelError, minimum=minimum, maximum=MAX_LAYER_SIZE
        )

    input_size = size("input_size", model_config.get("input_size"))
    output_size = size("output_size", model_config.get("output_size"), minimum=2)
    hidden: list[int] = []
    if model_type == "neural_network":
        one, many = model_config.get("hidden_size"), model_config.get("hidden_sizes")
        if (one is None) == (many is None):
            raise ModelError(
                "model_config.hidden_sizes",
                "neural_network needs exactly one of hidden_size or hidden_sizes",
            )
        if one is not None:
            hidden = [size("hidden_size", one)]
        else:
            values = read_list(many, "model_config.hidden_sizes", ModelError)
            if not values:
                raise ModelError(
                    "model_config.hidden_sizes", "hidden_sizes needs at least one layer"
                )
            hidden = [size(f"hidden_sizes[{i}]", v) for i, v in enumerate(values)]
    spec = ModelSpec(str(model_type), (input_size, *hidden, output_size))
    if spec.num_parameters > MAX_PARAMETERS:
        raise ModelError(
            "model_config",
            f"the model has {spec.num_parameters} parameters, above the limit of {MAX_PARAMETERS}",
        )
    return spec


def init_weights(spec: ModelSpec, seed: int) -> Weights:
    """Seeded initial weights: He-normal (std sqrt(2 / fan_in)) for layers followed by a ReLU,
    Glorot-normal (std sqrt(2 / (fan_in + fan_out))) for the output layer, zero biases."""
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for i in range(spec.num_layers):
        fan_in, fan_out = spec.layer_sizes[i], spec.layer_sizes[i + 1]
        last = i == spec.num_layers - 1
        std = np.sqrt(2.0 / (fan_in + fan_out)) if last else np.sqrt(2.0 / fan_in)
        weights[f"fc{i + 1}.weight"] = (rng.standard_normal((fan_out, fan_in)) * std).astype(
            np.float32
        )
        weights[f"fc{i + 1}.bias"] = np.zeros(fan_out, dtype=np.float32)
    return weights


def forward(
    spec: ModelSpec, weights: Mapping[str, NDArray[np.float32]], x: ArrayLike
) -> tuple[list[NDArray[np.float32]], NDArray[np.float32]]:
    """The hidden activations (input first) and the output logits for the rows of ``x``."""
    activation = np.asarray(x, dtype=np.float32)
    activations = [activation]
    for i in range(1, spec.num_layers + 1):
        z = activation @ weights[f"fc{i}.weight"].T + weights[f"fc{i}.bias"]
        if i == spec.num_layers:
            return activations, z
        activation = np.maximum(z, 0.0)
        activations.append(activation)
    raise AssertionError("unreachable: a model has at least one layer")


def log_softmax(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    result: NDArray[np.float32] = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def predict(
    spec: ModelSpec, weights: Mapping[str, NDArray[np.float32]], x: ArrayLike
) -> NDArray[np.int64]:
    """The most probable class of each row."""
    _, logits = forward(spec, weights, x)
    classes: NDArray[np.int64] = logits.argmax(axis=1).astype(np.int64)
    return classes


@dataclass(frozen=True)
class Evaluation:
    """Mean cross-entropy, accuracy and the number of rows they were computed on."""

    loss: float
    accuracy: float
    num_examples: int


def evaluate(
    spec: ModelSpec, weights: Mapping[str, NDArray[np.float32]], x: ArrayLike, y: ArrayLike
) -> Evaluation:
    """Cross-entropy loss and accuracy of ``weights`` on ``(x, y)``; labels are 0..C-1."""
    labels = np.asarray(y, dtype=np.int64)
    if labels.shape[0] == 0:
        raise ModelError("labels", "no rows to evaluate on")
    # A diverged model (weights near float32's limit) overflows: its loss is then NaN or
    # infinite, which the caller reports as such (round metrics store it as null).
    with np.errstate(over="ignore", invalid="ignore"):
        _, logits = forward(spec, weights, x)
        log_probs = log_softmax(logits)
        loss = float(-log_probs[np.arange(labels.shape[0]), labels].mean())
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    return Evaluation(loss, accuracy, int(labels.shape[0]))
