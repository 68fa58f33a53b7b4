"""Strict readers for FL request bodies: every refusal is an :class:`InvalidInput` naming the
field by its dotted path (``config.learning_rate``, ``training_data.metadata.alpha``).

The number readers are the FL core's (:mod:`parity.core.fl._params`: an integral float counts as
an int, a boolean is never a number, a string is never a number); this module turns their
:class:`FLConfigError` into the API's error and maps the core's short field names (``alpha``,
``mu``, ``model_config.input_size``) onto where they sit in a request body.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from parity.core.fl import _params
from parity.core.fl.errors import AggregationError, FLConfigError, ModelError, PartitionError
from parity.core.fl.privacy_errors import IncompatibleOptionsError
from parity.errors import InvalidInput

__all__ = [
    "MAX_NESTING",
    "check_finite_tree",
    "core_field",
    "read_float",
    "read_int",
    "read_mapping",
    "read_str",
    "refuse_unknown",
    "required",
    "translated",
]

# Deeper than any legitimate body; a deeper one is refused instead of walked.
MAX_NESTING = 64


def required(body: Mapping[str, Any], key: str, path: str) -> Any:
    """``body[key]``, or a 422 saying the field is required (``null`` counts as missing)."""
    value = body.get(key)
    if value is None:
        raise InvalidInput(path, f"{path} is required")
    return value


def _core_error(exc: FLConfigError, field: str | None = None) -> InvalidInput:
    code = "incompatible_options" if isinstance(exc, IncompatibleOptionsError) else None
    return InvalidInput(field or exc.field, exc.reason, code=code)


def read_int(
    value: Any, path: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    try:
        return _params.read_int(value, path, FLConfigError, minimum=minimum, maximum=maximum)
    except FLConfigError as exc:
        raise _core_error(exc) from None


def read_float(
    value: Any,
    path: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_exclusive: bool = False,
) -> float:
    try:
        return _params.read_float(
            value,
            path,
            FLConfigError,
            minimum=minimum,
            maximum=maximum,
            min_exclusive=min_exclusive,
        )
    except FLConfigError as exc:
        raise _core_error(exc) from None


def read_mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(path, f"{path} must be an object")
    return value


def read_str(value: Any, path: str, *, max_length: int, allow_empty: bool = False) -> str:
    """A string (surrounding whitespace removed), at most ``max_length`` characters."""
    if not isinstance(value, str):
        raise InvalidInput(path, f"{path} must be a string")
    text = value.strip()
    if not text and not allow_empty:
        raise InvalidInput(path, f"{path} must not be empty")
    if len(text) > max_length:
        raise InvalidInput(path, f"{path} is longer than {max_length} characters")
    return text


def refuse_unknown(
    body: Mapping[str, Any],
    known: frozenset[str],
    prefix: str,
    *,
    owner: str = "",
    hint: Callable[[str], str] | None = None,
) -> None:
    """A key the body does not define is a 422 naming its path and the valid keys
    (:func:`parity.core.fl._params.refuse_unknown`, the FL core's one check)."""
    _params.refuse_unknown(body, known, prefix, InvalidInput, owner=owner, hint=hint)


def check_finite_tree(
    value: Any,
    path: str = "",
    *,
    skip: frozenset[str] = frozenset(),
    expected: Mapping[str, str] | None = None,
) -> None:
    """Refuse NaN and ±Infinity anywhere in a parsed JSON body (Python's ``json`` module reads
    the ``NaN``/``Infinity`` literals). Top-level keys in ``skip`` are not walked (a caller that
    checks them itself, e.g. the tensors of a model update). ``expected`` maps the paths of
    fields that are not numbers to what they must be (``"description": "a string"``): a NaN
    there is refused as the wrong type, not as a number out of range."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_NESTING:
            raise InvalidInput(where or "body", f"nested deeper than {MAX_NESTING} levels")
        if isinstance(item, float) and not math.isfinite(item):
            kind = (expected or {}).get(where)
            if kind is not None:
                literal = "NaN" if math.isnan(item) else ("Infinity" if item > 0 else "-Infinity")
                raise InvalidInput(where, f"{where} must be {kind}, not {literal}")
            raise InvalidInput(
                where or "body", f"{where or 'value'} must be a finite number (not NaN or Infinity)"
            )
        if isinstance(item, Mapping):
            for key, child in item.items():
                if depth == 0 and key in skip:
                    continue
                stack.append((child, f"{where}.{key}" if where else str(key), depth + 1))
        elif isinstance(item, list | tuple):
            for i, child in enumerate(item):
                stack.append((child, f"{where}[{i}]", depth + 1))


# Where the FL core's field names sit in a session-create body. Aggregation parameters live in
# ``config.aggregation_params``, partition options in ``training_data.metadata``.
_EXACT = {
    "model_type": "model_type",
    "aggregation_method": "config.aggregation_method",
    "aggregation_params": "config.aggregation_params",
    "learning_rate": "config.learning_rate",
    "batch_size": "config.batch_size",
    "local_epochs": "config.local_epochs",
    "split_strategy": "training_data.split_strategy",
    "metadata": "training_data.metadata",
    "num_participants": "min_participants",
    "seed": "training_data.seed",
    # Raised once the data is at hand: the data set itself is at fault.
    "labels": "training_data.dataset_cid",
    "features": "training_data.dataset_cid",
    "num_rows": "training_data.dataset_cid",
}


def core_field(exc: FLConfigError) -> str:
    """The request-body path of the field a core :class:`FLConfigError` names."""
    field = exc.field
    if field in _EXACT:
        return _EXACT[field]
    if field.startswith("model_config"):
        return f"config.{field}"
    if isinstance(exc, AggregationError) or (isinstance(exc, ModelError) and field == "mu"):
        return f"config.aggregation_params.{field}"
    if isinstance(exc, PartitionError):
        return f"training_data.metadata.{field}"
    return field


@contextmanager
def translated(field: str | None = None) -> Iterator[None]:
    """Run core validation; a core refusal becomes a 422 at the body path of its field (or at
    ``field`` when given)."""
    try:
        yield
    except FLConfigError as exc:
        raise _core_error(exc, field or core_field(exc)) from None
