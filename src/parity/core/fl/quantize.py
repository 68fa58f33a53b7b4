"""From a model update to the integers SecAgg+ sums, and back from their sum.

A participant's contribution is flattened (:func:`flatten`, tensor order of the global model),
pre-scaled by its weight factor ``w = min(num_examples, max_weight) / max_weight`` with ``w``
appended as one more element (:func:`weighted_vector`), clipped to ``[-c, c]``
(``clipping_range``) and stochastically rounded to ``L = quantization_range`` levels
(:func:`quantize`): ``v -> (v + c) * (L - 1) / (2c)``, rounded up with probability equal to the
fraction, so the rounding is unbiased and moves each value by less than one step
``2c / (L - 1)``.

The server unmasks the sum of m such vectors modulo ``modulus_range`` (exact when
``m * (L - 1) < modulus_range``, see :func:`~.secagg_config.check_capacity`);
:func:`dequantize_sum` turns it into ``sum_i w_i * x_i`` (plus rounding), whose last element is
``sum_i w_i``, and :func:`weighted_mean` divides: the example-weighted FedAvg mean, as the
plain aggregation would compute it, up to quantization error (and exactly the unweighted mean
when every participant's weight reaches ``max_weight``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from parity.core.fl.aggregation import TensorMap, check_same_layout
from parity.core.fl.errors import FLConfigError
from parity.core.fl.privacy_errors import SecAggError
from parity.core.fl.secagg_config import SecAggConfig, check_capacity

__all__ = [
    "Layout",
    "decode_sum",
    "dequantize_sum",
    "encode_update",
    "flatten",
    "layout_of",
    "quantization_step",
    "quantize",
    "unflatten",
    "weight_factor",
    "weighted_mean",
    "weighted_vector",
]

Layout = Sequence[tuple[str, tuple[int, ...]]]
UInt = NDArray[np.uint64]


def layout_of(weights: TensorMap) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes in the model's order: both sides flatten in this order."""
    return [(name, tuple(int(d) for d in np.shape(a))) for name, a in weights.items()]


def flatten(tensors: TensorMap, layout: Layout) -> NDArray[np.float64]:
    """One float64 vector of the tensors in ``layout`` order."""
    if not layout:
        return np.zeros(0, np.float64)
    reference = {name: np.empty(shape) for name, shape in layout}
    check_same_layout(reference, tensors, "the update")
    return np.concatenate([np.asarray(tensors[n], np.float64).ravel() for n, _ in layout])


def unflatten(vector: NDArray[Any], layout: Layout) -> dict[str, NDArray[np.float64]]:
    """The tensors of a vector :func:`flatten` made."""
    sizes = [math.prod(shape) for _, shape in layout]
    if vector.shape != (sum(sizes),):
        raise SecAggError("masked_input", f"{vector.size} values for a model of {sum(sizes)}")
    result: dict[str, NDArray[np.float64]] = {}
    offset = 0
    for (name, shape), size in zip(layout, sizes, strict=True):
        result[name] = np.asarray(vector[offset : offset + size], np.float64).reshape(shape)
        offset += size
    return result


def weight_factor(num_examples: int, max_weight: float) -> float:
    """``min(num_examples, max_weight) / max_weight``, in (0, 1]."""
    if isinstance(num_examples, bool) or num_examples <= 0:
        raise FLConfigError("num_examples", "num_examples must be a positive integer")
    return min(float(num_examples), max_weight) / max_weight


def weighted_vector(vector: NDArray[Any], num_examples: int, max_weight: float) -> NDArray[Any]:
    """``[w * vector..., w]`` with the participant's weight factor ``w``."""
    w = weight_factor(num_examples, max_weight)
    return np.append(np.asarray(vector, np.float64) * w, w)


def quantization_step(clipping_range: float, quantization_range: int) -> float:
    """The width of one quantization level: the most rounding moves a value."""
    return 2.0 * clipping_range / (quantization_range - 1)


def quantize(
    vector: NDArray[Any], clipping_range: float, quantization_range: int, rng: np.random.Generator
) -> UInt:
    """Clip to ``[-c, c]`` and round stochastically to an integer in ``[0, L - 1]``."""
    values = np.asarray(vector, np.float64)
    if not np.isfinite(values).all():
        raise FLConfigError("weights", "the update contains NaN or infinity")
    scaled = (np.clip(values, -clipping_range, clipping_range) + clipping_range) / (
        quantization_step(clipping_range, quantization_range)
    )
    low = np.floor(scaled)
    rounded = low + (rng.random(scaled.shape) < (scaled - low))
    levels: UInt = np.minimum(rounded, quantization_range - 1).astype(np.uint64)
    return levels


def dequantize_sum(
    total: NDArray[Any], num_inputs: int, clipping_range: float, quantization_range: int
) -> NDArray[np.float64]:
    """The float sum of ``num_inputs`` vectors from the (unmasked, exact) sum of their levels."""
    step = quantization_step(clipping_range, quantization_range)
    return np.asarray(total, np.float64) * step - num_inputs * clipping_range


def weighted_mean(weighted_sum: NDArray[np.float64]) -> NDArray[np.float64]:
    """``sum_i w_i x_i / sum_i w_i`` from the dequantized sum of :func:`weighted_vector`s."""
    total_weight = float(weighted_sum[-1])
    if not total_weight > 0:
        raise SecAggError("weights", "the participants' weights sum to zero after quantization")
    return np.asarray(weighted_sum[:-1], np.float64) / total_weight


def encode_update(
    delta: TensorMap,
    num_examples: int,
    config: SecAggConfig,
    layout: Layout,
    rng: np.random.Generator,
) -> UInt:
    """A participant's quantized, weighted update (what it masks and sends), from its model
    delta (``local - global``; its values must mostly lie within ``clipping_range``)."""
    vector = weighted_vector(flatten(delta, layout), num_examples, config.max_weight)
    return quantize(vector, config.clipping_range, config.quantization_range, rng)


def decode_sum(
    total: NDArray[Any], num_inputs: int, config: SecAggConfig, layout: Layout
) -> dict[str, NDArray[np.float64]]:
    """The example-weighted mean delta per tensor from the unmasked sum of ``num_inputs``
    :func:`encode_update` vectors."""
    check_capacity(config, num_inputs)
    summed = dequantize_sum(total, num_inputs, config.clipping_range, config.quantization_range)
    return unflatten(weighted_mean(summed), layout)
