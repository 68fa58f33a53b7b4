"""Federated averaging and the types every aggregator shares.

A model is a ``dict[str, ndarray]`` keyed by tensor name (``fc1.weight``, ``fc1.bias``, ...); a
participant's contribution is a :class:`ClientUpdate` ``(weights, num_examples)``: its locally
trained model (not a difference) and the number of examples it trained on.

FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"): ``x_{t+1} = sum_i n_i x_i / sum_i n_i``. :class:`WeightedSum` computes it
as a running sum in float64, so the server can fold in updates one at a time and memory stays
one model whatever the number of participants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from parity.core.fl.errors import AggregationError

__all__ = [
    "ClientUpdate",
    "WeightedSum",
    "Weights",
    "as_float32",
    "check_same_layout",
    "checked_updates",
    "fedavg",
    "stack_tensor",
]

Weights = dict[str, NDArray[np.float32]]
TensorMap = Mapping[str, NDArray[Any]]


class ClientUpdate(NamedTuple):
    """One participant's trained model and the number of examples behind it."""

    weights: TensorMap
    num_examples: int


def as_float32(weights: Mapping[str, NDArray[Any]]) -> Weights:
    """A float32 copy (the wire and storage dtype) with the same names, in the same order."""
    return {name: np.asarray(array, dtype=np.float32).copy() for name, array in weights.items()}


def check_same_layout(reference: TensorMap, other: TensorMap, which: str) -> None:
    """``other`` has exactly ``reference``'s tensor names and shapes, else an error naming the
    first tensor at fault (``which`` says whose model it is, e.g. ``update 3``)."""
    missing = [name for name in reference if name not in other]
    if missing:
        raise AggregationError(missing[0], f"{which} lacks tensor {missing[0]!r}")
    extra = [name for name in other if name not in reference]
    if extra:
        raise AggregationError(extra[0], f"{which} has unexpected tensor {extra[0]!r}")
    for name, array in reference.items():
        if np.shape(other[name]) != np.shape(array):
            raise AggregationError(
                name,
                f"{which}: tensor {name!r} has shape {list(np.shape(other[name]))}, "
                f"expected {list(np.shape(array))}",
            )


def _check_examples(num_examples: Any, which: str) -> int:
    if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
        raise AggregationError("num_examples", f"{which}: num_examples must be an integer")
    if num_examples <= 0:
        raise AggregationError("num_examples", f"{which}: num_examples must be positive")
    return int(num_examples)


class WeightedSum:
    """Running example-weighted sum of models: ``add`` each update, then ``mean()``.

    Keeps one float64 accumulator per tensor (exact enough that the order of ``add`` calls
    changes the float32 result by at most a rounding step)."""

    def __init__(self) -> None:
        self._sums: dict[str, NDArray[np.float64]] | None = None
        self._layout: dict[str, NDArray[np.float32]] = {}
        self.count = 0
        self.total_examples = 0

    def add(self, weights: TensorMap, num_examples: int) -> None:
        which = f"update {self.count}"
        examples = _check_examples(num_examples, which)
        if self._sums is None:
            self._layout = {n: np.empty(np.shape(a), np.float32) for n, a in weights.items()}
            self._sums = {n: np.zeros(np.shape(a), np.float64) for n, a in weights.items()}
        else:
            check_same_layout(self._layout, weights, which)
        for name, total in self._sums.items():
            total += np.asarray(weights[name], dtype=np.float64) * examples
        self.count += 1
        self.total_examples += examples

    def mean(self) -> Weights:
        """The example-weighted mean, float32; an error when nothing was added."""
        if self._sums is None:
            raise AggregationError("updates", "no updates to aggregate")
        return {
            name: (total / self.total_examples).astype(np.float32)
            for name, total in self._sums.items()
        }


def fedavg(updates: Iterable[ClientUpdate | tuple[TensorMap, int]]) -> Weights:
    """FedAvg: the example-weighted mean of the participants' models."""
    accumulator = WeightedSum()
    for weights, num_examples in updates:
        accumulator.add(weights, num_examples)
    return accumulator.mean()


def stack_tensor(
    updates: Sequence[ClientUpdate | tuple[TensorMap, int]], name: str
) -> NDArray[np.float64]:
    """The ``name`` tensor of every update stacked on a new first axis (float64)."""
    return np.stack([np.asarray(w[name], dtype=np.float64) for w, _ in updates])


def checked_updates(
    updates: Sequence[ClientUpdate | tuple[TensorMap, int]],
    reference: TensorMap | None = None,
) -> list[ClientUpdate]:
    """The updates as :class:`ClientUpdate`, all with ``reference``'s layout (or the first
    update's) and a positive example count; an error naming the first fault."""
    if not updates:
        raise AggregationError("updates", "no updates to aggregate")
    layout = reference if reference is not None else updates[0][0]
    result = []
    for i, (weights, num_examples) in enumerate(updates):
        check_same_layout(layout, weights, f"update {i}")
        result.append(ClientUpdate(weights, _check_examples(num_examples, f"update {i}")))
    return result
