"""``privacy_config.secure_aggregation``: validation into a typed :class:`SecAggConfig`.

Nested form: ``{"secure_aggregation": {"mode": "secagg_plus", "num_shares",
"reconstruction_threshold", "clipping_range", "quantization_range", "modulus_range"?,
"max_weight"?, "stage_timeout_seconds"}}``. Flat form (the original API's):
``"secure_aggregation": true`` with the same fields beside it (``mode`` is then implied: there
beside the flag it belongs to differential privacy). ``modulus_range`` defaults to 2^32 and
``max_weight`` to 1000 (Flower's SecAgg+ defaults); every other field is required.

Rules beyond ranges, each explained in its error:

- ``num_shares`` is odd: a participant keeps one share and gives one to each of its neighbours,
  ``(num_shares - 1) / 2`` on either side of it in the ring of the communication graph;
- ``num_shares / 2 < reconstruction_threshold <= num_shares``: above half, no two disjoint sets
  of neighbours can both reach the threshold, so a server cannot obtain both a participant's
  self-mask seed (from the neighbours told it survived) and its mask key (from those told it
  dropped) — Bell et al. 2020, §3;
- ``modulus_range`` is a power of two (uint64 arithmetic wraps exactly) and exceeds the largest
  possible sum, ``participants * (quantization_range - 1)`` (:func:`check_capacity`);
- ``clipping_range >= 1``: the participant's weight factor (at most 1) travels in the same
  quantized vector as its update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from parity.core.fl._params import read_float, read_int, read_mapping, refuse_unknown
from parity.core.fl.errors import FLConfigError

__all__ = [
    "DEFAULT_MAX_WEIGHT",
    "DEFAULT_MODULUS_RANGE",
    "SECAGG_FIELDS",
    "SecAggConfig",
    "check_capacity",
    "parse_secagg_fields",
    "parse_secure_aggregation",
]

DEFAULT_MODULUS_RANGE = 2**32
DEFAULT_MAX_WEIGHT = 1000.0
MAX_MODULUS_BITS = 64
MAX_STAGE_TIMEOUT_SECONDS = 86_400.0
SECAGG_FIELDS = frozenset(
    {
        "mode",
        "num_shares",
        "reconstruction_threshold",
        "clipping_range",
        "quantization_range",
        "modulus_range",
        "max_weight",
        "stage_timeout_seconds",
    }
)


@dataclass(frozen=True)
class SecAggConfig:
    """Validated SecAgg+ settings (see the module's rules)."""

    num_shares: int
    reconstruction_threshold: int
    clipping_range: float
    quantization_range: int
    stage_timeout_seconds: float
    modulus_range: int = DEFAULT_MODULUS_RANGE
    max_weight: float = DEFAULT_MAX_WEIGHT
    mode: Literal["secagg_plus"] = "secagg_plus"

    @property
    def modulus_bits(self) -> int:
        return self.modulus_range.bit_length() - 1


def check_capacity(
    config: SecAggConfig, num_participants: int, field: str = "modulus_range"
) -> None:
    """Refuse a round whose sum of quantized values could wrap around the modulus."""
    largest = num_participants * (config.quantization_range - 1)
    if largest >= config.modulus_range:
        raise FLConfigError(
            field,
            f"modulus_range 2^{config.modulus_bits} is too small for {num_participants} "
            f"participants at quantization_range {config.quantization_range}: the sum can reach "
            f"{largest}",
        )


def parse_secagg_fields(
    given: Mapping[str, Any], prefix: str, *, mode_implied: bool = False
) -> SecAggConfig:
    """Read the SecAgg+ fields from ``given``; ``prefix`` is the dotted path errors name."""

    def field(key: str) -> str:
        return f"{prefix}.{key}"

    def required(key: str) -> Any:
        if given.get(key) is None:
            raise FLConfigError(field(key), f"{field(key)} is required")
        return given[key]

    if not mode_implied and required("mode") != "secagg_plus":
        raise FLConfigError(field("mode"), f"{field('mode')} must be 'secagg_plus'")
    shares = read_int(
        required("num_shares"), field("num_shares"), FLConfigError, minimum=3, maximum=65_535
    )
    if shares % 2 == 0:
        raise FLConfigError(
            field("num_shares"),
            f"{field('num_shares')} must be odd: each participant keeps one share and gives one "
            "to each neighbour, as many on either side of it",
        )
    threshold = read_int(
        required("reconstruction_threshold"),
        field("reconstruction_threshold"),
        FLConfigError,
        minimum=2,
        maximum=shares,
    )
    if 2 * threshold <= shares:
        raise FLConfigError(
            field("reconstruction_threshold"),
            f"{field('reconstruction_threshold')} must be more than half of num_shares "
            f"({shares}): otherwise the server could collect both a participant's self-mask "
            "seed and its mask key",
        )
    clipping = read_float(
        required("clipping_range"), field("clipping_range"), FLConfigError, minimum=1.0
    )
    levels = read_int(
        required("quantization_range"),
        field("quantization_range"),
        FLConfigError,
        minimum=2,
        maximum=2**62,
    )
    modulus = DEFAULT_MODULUS_RANGE
    if given.get("modulus_range") is not None:
        modulus = read_int(
            given["modulus_range"],
            field("modulus_range"),
            FLConfigError,
            minimum=4,
            maximum=2**MAX_MODULUS_BITS,
        )
        if modulus & (modulus - 1):
            raise FLConfigError(
                field("modulus_range"), f"{field('modulus_range')} must be a power of two"
            )
    if levels > modulus:
        raise FLConfigError(
            field("quantization_range"),
            f"{field('quantization_range')} must not exceed modulus_range ({modulus})",
        )
    max_weight = DEFAULT_MAX_WEIGHT
    if given.get("max_weight") is not None:
        max_weight = read_float(
            given["max_weight"], field("max_weight"), FLConfigError, minimum=0.0, min_exclusive=True
        )
    timeout = read_float(
        required("stage_timeout_seconds"),
        field("stage_timeout_seconds"),
        FLConfigError,
        minimum=0.0,
        min_exclusive=True,
        maximum=MAX_STAGE_TIMEOUT_SECONDS,
    )
    return SecAggConfig(
        num_shares=shares,
        reconstruction_threshold=threshold,
        clipping_range=clipping,
        quantization_range=levels,
        stage_timeout_seconds=timeout,
        modulus_range=modulus,
        max_weight=max_weight,
    )


def parse_secure_aggregation(
    privacy_config: Mapping[str, Any] | None, prefix: str = "privacy_config"
) -> SecAggConfig | None:
    """The SecAgg+ settings of a session's ``privacy_config`` (either form), or ``None``."""
    if privacy_config is None:
        return None
    config = read_mapping(privacy_config, prefix, FLConfigError)
    flag_field = f"{prefix}.secure_aggregation"
    value = config.get("secure_aggregation")
    if value is None or value is False:
        return None
    if value is True:
        return parse_secagg_fields(config, prefix, mode_implied=True)
    if isinstance(value, Mapping):
        refuse_unknown(value, SECAGG_FIELDS, flag_field)
        return parse_secagg_fields(value, flag_field)
    raise FLConfigError(flag_field, f"{flag_field} must be an object, true or false")
