"""Strict readers for JSON-ish option values: each refusal names the field.

JSON has one number type, so an integral float (``10.0``) is accepted where an int is wanted;
booleans are never numbers here (``True`` is an ``int`` to Python, not to a caller).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from parity.core.fl.errors import FLConfigError

ErrorType = Callable[[str, str], FLConfigError]


def refuse_unknown(
    given: Mapping[str, Any],
    known: frozenset[str] | set[str],
    prefix: str,
    error: Callable[[str, str], Exception] = FLConfigError,
    *,
    owner: str = "",
    hint: Callable[[str], str] | None = None,
) -> None:
    """A key ``known`` does not hold is refused, naming its dotted path and the valid keys, so
    a misspelt optional setting is never silently dropped. ``owner`` names what defines the
    keys when that depends on another field (``unknown field 'muu' for fedprox aggregation;
    valid: mu``); ``hint`` may add a sentence about a key."""
    for key in given:
        if key not in known:
            path = f"{prefix}.{key}" if prefix else str(key)
            where = f" for {owner}" if owner else ""
            valid = ", ".join(sorted(known)) or "(none)"
            extra = hint(key) if hint is not None else ""
            raise error(path, f"unknown field {key!r}{where}; valid: {valid}{extra}")


def read_int(
    value: Any,
    field: str,
    error: ErrorType,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(field, f"{field} must be an integer")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise error(field, f"{field} must be an integer")
        value = int(value)
    if minimum is not None and value < minimum:
        raise error(field, f"{field} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise error(field, f"{field} must be at most {maximum}")
    return int(value)


def read_float(
    value: Any,
    field: str,
    error: ErrorType,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_exclusive: bool = False,
    max_exclusive: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(field, f"{field} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise error(field, f"{field} must be a finite number")
    if minimum is not None and (number <= minimum if min_exclusive else number < minimum):
        bound = "greater than" if min_exclusive else "at least"
        raise error(field, f"{field} must be {bound} {minimum:g}")
    if maximum is not None and (number >= maximum if max_exclusive else number > maximum):
        bound = "less than" if max_exclusive else "at most"
        raise error(field, f"{field} must be {bound} {maximum:g}")
    return number


def read_bool(value: Any, field: str, error: ErrorType) -> bool:
    if not isinstance(value, bool):
        raise error(field, f"{field} must be true or false")
    return value


def read_list(value: Any, field: str, error: ErrorType) -> Sequence[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise error(field, f"{field} must be a list")
    return value


def read_mapping(value: Any, field: str, error: ErrorType) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise error(field, f"{field} must be an object")
    return value
