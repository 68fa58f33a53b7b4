"""A session's whole ``privacy_config``: differential privacy, secure aggregation, and the
combinations that cannot work together (:class:`IncompatibleOptionsError`, a 422
``incompatible_options``).

Incompatible, and why:

- secure aggregation with an aggregation method that needs each update (``fedmedian``,
  ``trimmed_mean``, ``krum``, ``multi_krum``): the server only ever learns the sum;
- central DP with such a method: DP-FedAvg's noise is calibrated to a mean of clipped updates;
- adaptive clipping with secure aggregation: the server cannot tell which masked updates were
  clipped, and the clip count it would need is not part of the secure sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parity.core.fl._params import read_mapping, refuse_unknown
from parity.core.fl.aggregators import AGGREGATORS, canonical_method
from parity.core.fl.dp import adaptive_noise_multipliers
from parity.core.fl.dp_config import DP_FIELDS, DPConfig, parse_differential_privacy
from parity.core.fl.errors import FLConfigError
from parity.core.fl.privacy_errors import IncompatibleOptionsError
from parity.core.fl.secagg_config import (
    SECAGG_FIELDS,
    SecAggConfig,
    check_capacity,
    parse_secure_aggregation,
)

__all__ = ["PrivacyConfig", "parse_privacy_config"]

_FLAGS = frozenset({"differential_privacy", "secure_aggregation"})


@dataclass(frozen=True)
class PrivacyConfig:
    """What a session asked for; both ``None`` means neither DP nor secure aggregation."""

    differential_privacy: DPConfig | None = None
    secure_aggregation: SecAggConfig | None = None

    @property
    def enabled(self) -> bool:
        return self.differential_privacy is not None or self.secure_aggregation is not None


def _check_keys(config: Mapping[str, Any], prefix: str) -> None:
    # Flat keys sit beside their flag only while the flag is not an object: a nested object and
    # a stray flat copy of one of its fields would leave it unclear which one holds.
    known = set(_FLAGS)
    if not isinstance(config.get("differential_privacy"), Mapping):
        known |= DP_FIELDS
    if not isinstance(config.get("secure_aggregation"), Mapping):
        known |= SECAGG_FIELDS

    def inside(key: str) -> str:
        nested = key in DP_FIELDS | SECAGG_FIELDS
        return " (it belongs inside the differential_privacy or secure_aggregation object)" * nested

    refuse_unknown(config, known, prefix, hint=inside)


def parse_privacy_config(
    value: Any,
    *,
    aggregation_method: Any = None,
    min_participants: int | None = None,
    max_participants: int | None = None,
    prefix: str = "privacy_config",
) -> PrivacyConfig:
    """Validate a session's ``privacy_config`` (``None`` = no privacy features).

    With ``aggregation_method`` the incompatible combinations are refused; with
    ``min_participants`` an adaptive clip whose count noise is too small for the fewest
    participants is refused; with ``max_participants`` a SecAgg+ modulus too small for the
    largest round is refused."""
    if value is None:
        return PrivacyConfig()
    config = read_mapping(value, prefix, FLConfigError)
    _check_keys(config, prefix)
    dp = parse_differential_privacy(config, prefix)
    secagg = parse_secure_aggregation(config, prefix)
    secagg_field = f"{prefix}.secure_aggregation"
    dp_field = f"{prefix}.differential_privacy"
    # Where the fields sit: inside the object, or beside the flag in the flat form.
    secagg_fields = (
        secagg_field if isinstance(config.get("secure_aggregation"), Mapping) else prefix
    )
    dp_fields = dp_field if isinstance(config.get("differential_privacy"), Mapping) else prefix
    if aggregation_method is not None:
        method = canonical_method(aggregation_method)
        if not AGGREGATORS[method].streaming:
            if secagg is not None:
                raise IncompatibleOptionsError(
                    secagg_field,
                    f"secure aggregation gives the server only the sum of the updates; "
                    f"{method} needs each update",
                )
            if dp is not None and dp.mode == "central":
                raise IncompatibleOptionsError(
                    dp_field,
                    f"central differential privacy adds noise to a mean of clipped updates; "
                    f"{method} is not a mean (use mode 'local')",
                )
    if dp is not None and dp.adaptive is not None and secagg is not None:
        raise IncompatibleOptionsError(
            f"{dp_fields}.adaptive_clipping",
            "adaptive clipping needs the count of clipped updates, which secure aggregation "
            "hides; use a fixed l2_norm_clip",
        )
    if dp is not None and dp.adaptive is not None and min_participants is not None:
        try:
            adaptive_noise_multipliers(
                dp.noise_multiplier, min_participants, dp.adaptive.clipped_count_stddev
            )
        except FLConfigError as exc:
            raise FLConfigError(
                f"{dp_fields}.adaptive_clipping.clipped_count_stddev", exc.reason
            ) from exc
    if secagg is not None and max_participants is not None:
        check_capacity(secagg, max_participants, f"{secagg_fields}.modulus_range")
    return PrivacyConfig(dp, secagg)
