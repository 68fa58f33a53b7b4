"""Models as safetensors bytes, and the checks an uploaded update must pass.

safetensors (no pickle: a runner's upload can never run code on the server) is the storage and
wire format of global models and updates; the content store keeps the bytes, this module turns
them into ``dict[str, float32 ndarray]`` and back without touching a file.

Checks, each naming the tensor at fault: :func:`check_layout` (names and shapes against the
model), :func:`check_finite`, :func:`update_norm` (L2 norm of ``update - global`` over all
tensors, for a configured bound), combined by :func:`validate_update`. The README's JSON update
form (``weights``: per tensor a flat or nested list of numbers) is read by :func:`from_lists`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import load, save

from parity.core.fl.aggregation import Weights
from parity.core.fl.errors import TensorError

__all__ = [
    "FLOAT_DTYPES",
    "check_finite",
    "check_layout",
    "decode",
    "encode",
    "from_lists",
    "shapes_of",
    "to_lists",
    "update_norm",
    "validate_update",
]

Shapes = Mapping[str, tuple[int, ...]]
# Accepted on input and converted to float32; anything else (ints, bools) is refused.
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def encode(weights: Mapping[str, NDArray[Any]], metadata: Mapping[str, str] | None = None) -> bytes:
    """safetensors bytes of ``weights`` as float32 (tensor order is the format's, sorted)."""
    tensors = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in weights.items()}
    return bytes(save(tensors, metadata=dict(metadata) if metadata else None))


def decode(data: bytes) -> Weights:
    """The tensors of a safetensors file as float32; a :class:`TensorError` when the bytes are
    not a safetensors file or hold a non-float tensor."""
    try:
        tensors = load(bytes(data))
    except Exception as exc:  # the library raises several types for malformed input
        raise TensorError("model", f"not a readable safetensors file: {exc}") from exc
    result: Weights = {}
    for name, array in tensors.items():
        if array.dtype.type not in FLOAT_DTYPES:
            raise TensorError(name, f"tensor {name!r} has dtype {array.dtype}; floats only")
        result[name] = array.astype(np.float32, copy=False)
    return result


def shapes_of(weights: Mapping[str, NDArray[Any]]) -> dict[str, list[int]]:
    """Tensor name -> shape as a JSON-ready list."""
    return {name: [int(d) for d in np.shape(a)] for name, a in weights.items()}


def check_layout(weights: Mapping[str, NDArray[Any]], expected: Shapes) -> None:
    """Exactly the expected tensor names, each with its expected shape."""
    for name in expected:
        if name not in weights:
            raise TensorError(name, f"tensor {name!r} is missing")
    for name, array in weights.items():
        if name not in expected:
            raise TensorError(name, f"unexpected tensor {name!r}")
        if tuple(np.shape(array)) != tuple(expected[name]):
            raise TensorError(
                name,
                f"tensor {name!r} has shape {list(np.shape(array))}, "
                f"expected {list(expected[name])}",
            )


def check_finite(weights: Mapping[str, NDArray[Any]]) -> None:
    """Every value is finite (no NaN or infinity)."""
    for name, array in weights.items():
        if not np.isfinite(array).all():
            raise TensorError(name, f"tensor {name!r} contains NaN or infinity")


def update_norm(
    weights: Mapping[str, NDArray[Any]], global_weights: Mapping[str, NDArray[Any]]
) -> float:
    """L2 norm of ``weights - global_weights`` over all tensors together (float64)."""
    total = 0.0
    for name, array in weights.items():
        diff = np.asarray(array, dtype=np.float64) - np.asarray(
            global_weights[name], dtype=np.float64
        )
        total += float(np.dot(diff.ravel(), diff.ravel()))
    return math.sqrt(total)


def validate_update(
    weights: Mapping[str, NDArray[Any]],
    global_weights: Mapping[str, NDArray[Any]],
    *,
    max_norm: float | None = None,
) -> float:
    """An update's acceptance checks against the round's global model: layout, finiteness and
    (with ``max_norm``) the L2 norm of its change. Returns that norm."""
    check_layout(weights, {n: tuple(np.shape(a)) for n, a in global_weights.items()})
    check_finite(weights)
    norm = update_norm(weights, global_weights)
    if max_norm is not None and norm > max_norm:
        raise TensorError(
            "weights", f"the update's L2 norm {norm:.6g} exceeds the bound of {max_norm:g}"
        )
    return norm


def from_lists(data: Mapping[str, Any], expected: Shapes) -> Weights:
    """The JSON form: per tensor a flat list (length = the shape's product) or a nested list of
    the exact shape. Names, counts and values are checked; non-finite values are refused."""
    if not isinstance(data, Mapping):
        raise TensorError("weights", "weights must be an object of tensor name -> numbers")
    result: Weights = {}
    for name, values in data.items():
        if name not in expected:
            raise TensorError(name, f"unexpected tensor {name!r}")
        shape = tuple(expected[name])
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TensorError(name, f"tensor {name!r} is not a list of numbers") from exc
        if _has_non_number(values):
            raise TensorError(name, f"tensor {name!r} is not a list of numbers")
        if array.ndim == 1 and array.size == math.prod(shape):
            array = array.reshape(shape)
        if array.shape != shape:
            raise TensorError(
                name, f"tensor {name!r} has shape {list(array.shape)}, expected {list(shape)}"
            )
        with np.errstate(over="ignore"):  # past float32's range becomes infinity: refused
            single = array.astype(np.float32)
        if not np.isfinite(single).all():
            raise TensorError(
                name, f"tensor {name!r} contains NaN or infinity (or a value past float32's range)"
            )
        result[name] = single
    check_layout(result, expected)
    return result


_NUMBERS = frozenset((float, int))
_NESTED = frozenset((list, tuple))


def _has_non_number(values: Any) -> bool:
    # numpy would read True as 1.0 and "2.5" as 2.5; a JSON update must hold numbers only.
    # The element types of each list are collected as a set (one C-level pass; ``type(True)``
    # is bool, not int), so a model's thousands of floats cost no Python call per value.
    if not isinstance(values, list | tuple):
        return isinstance(values, bool | str | bytes)
    kinds = set(map(type, values))
    if kinds <= _NUMBERS:
        return False
    if kinds - _NUMBERS - _NESTED:
        return True
    return any(_has_non_number(v) for v in values if type(v) in _NESTED)


def to_lists(weights: Mapping[str, NDArray[Any]]) -> dict[str, list[Any]]:
    """Nested lists of Python floats, for a JSON response."""
    return {name: np.asarray(a, dtype=np.float32).tolist() for name, a in weights.items()}
