"""``privacy_config.differential_privacy``: validation into a typed :class:`DPConfig`.

Two accepted forms, both strict (every field named in the error that refuses it):

- nested: ``{"differential_privacy": {"mode": "central" | "local", "noise_multiplier": z,
  "l2_norm_clip": C | "adaptive_clipping": {"initial", "target_quantile", "learning_rate",
  "clipped_count_stddev"?}, "delta": d, "max_epsilon"?: e, "sampling_rate"?: q}}``;
- flat (the original API's): ``{"differential_privacy": true, "noise_multiplier": z,
  "l2_norm_clip": C, ...}``, the same keys beside the flag; the fields the original did not have
  (``mode``, ``delta``) are still required, nothing is defaulted.

``differential_privacy`` absent, ``null`` or ``false`` means no DP (flat keys beside a ``false``
flag are ignored, as the original ignored them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from parity.core.fl._params import read_float, read_mapping, refuse_unknown
from parity.core.fl.errors import FLConfigError

__all__ = [
    "DP_FIELDS",
    "DP_MODES",
    "AdaptiveClipping",
    "DPConfig",
    "parse_adaptive_clipping",
    "parse_differential_privacy",
    "parse_dp_fields",
]

DPMode = Literal["central", "local"]
DP_MODES: tuple[DPMode, ...] = ("central", "local")
DP_FIELDS = frozenset(
    {
        "mode",
        "noise_multiplier",
        "l2_norm_clip",
        "adaptive_clipping",
        "delta",
        "max_epsilon",
        "sampling_rate",
    }
)
_ADAPTIVE_FIELDS = frozenset(
    {"initial", "target_quantile", "learning_rate", "clipped_count_stddev"}
)


@dataclass(frozen=True)
class AdaptiveClipping:
    """Andrew et al. 2021 ("Differentially Private Learning with Adaptive Clipping"): the clip
    norm starts at ``initial`` and moves geometrically so that a ``target_quantile`` share of
    updates falls under it. ``clipped_count_stddev`` is the noise on the count of unclipped
    updates; ``None`` means the paper's m/20 for m updates in the round."""

    initial: float
    target_quantile: float
    learning_rate: float
    clipped_count_stddev: float | None = None


@dataclass(frozen=True)
class DPConfig:
    """Client-level DP-FedAvg settings. Exactly one of ``l2_norm_clip`` and ``adaptive`` is set.

    ``noise_multiplier`` z is the privacy-relevant multiplier (the one the accountant uses); with
    adaptive clipping part of the budget goes to the clip count and the update noise is larger
    (see :func:`parity.core.fl.dp.adaptive_noise_multipliers`). ``sampling_rate`` q is the
    per-round probability that a runner takes part; ``None`` means every runner every round
    (q = 1 for the accountant)."""

    mode: DPMode
    noise_multiplier: float
    delta: float
    l2_norm_clip: float | None = None
    adaptive: AdaptiveClipping | None = None
    max_epsilon: float | None = None
    sampling_rate: float | None = None

    def __post_init__(self) -> None:
        # Built by hand (tests, the trainer) as well as by the parser: keep the one invariant
        # every function here relies on.
        if (self.l2_norm_clip is None) == (self.adaptive is None):
            raise FLConfigError("l2_norm_clip", "give either l2_norm_clip or adaptive_clipping")

    @property
    def initial_clip(self) -> float:
        """The clip norm of round 1 (the fixed one, or the adaptive start)."""
        if self.adaptive is not None:
            return self.adaptive.initial
        assert self.l2_norm_clip is not None  # __post_init__ guarantees one of the two
        return self.l2_norm_clip

    @property
    def accounting_sampling_rate(self) -> float:
        return 1.0 if self.sampling_rate is None else self.sampling_rate


def _positive(value: Any, field: str) -> float:
    return read_float(value, field, FLConfigError, minimum=0.0, min_exclusive=True)


def parse_adaptive_clipping(value: Any, prefix: str) -> AdaptiveClipping:
    """The ``adaptive_clipping`` object; ``prefix`` is its dotted path."""
    given = read_mapping(value, prefix, FLConfigError)
    refuse_unknown(given, _ADAPTIVE_FIELDS, prefix)
    for key in ("initial", "target_quantile", "learning_rate"):
        if given.get(key) is None:
            raise FLConfigError(f"{prefix}.{key}", f"{prefix}.{key} is required")
    stddev = given.get("clipped_count_stddev")
    return AdaptiveClipping(
        initial=_positive(given["initial"], f"{prefix}.initial"),
        target_quantile=read_float(
            given["target_quantile"],
            f"{prefix}.target_quantile",
            FLConfigError,
            minimum=0.0,
            maximum=1.0,
        ),
        learning_rate=_positive(given["learning_rate"], f"{prefix}.learning_rate"),
        clipped_count_stddev=(
            None if stddev is None else _positive(stddev, f"{prefix}.clipped_count_stddev")
        ),
    )


def parse_dp_fields(given: Mapping[str, Any], prefix: str) -> DPConfig:
    """Read the DP fields from ``given`` (the nested object, or the privacy config itself in the
    flat form); ``prefix`` is the dotted path errors name. Other keys are not looked at."""

    def field(key: str) -> str:
        return f"{prefix}.{key}"

    def required(key: str) -> Any:
        if given.get(key) is None:
            raise FLConfigError(field(key), f"{field(key)} is required")
        return given[key]

    mode = required("mode")
    if mode not in DP_MODES:
        raise FLConfigError(field("mode"), f"{field('mode')} must be 'central' or 'local'")
    noise = read_float(
        required("noise_multiplier"), field("noise_multiplier"), FLConfigError, minimum=0.0
    )
    has_clip = given.get("l2_norm_clip") is not None
    has_adaptive = given.get("adaptive_clipping") is not None
    if has_clip and has_adaptive:
        raise FLConfigError(
            field("adaptive_clipping"), "give either l2_norm_clip or adaptive_clipping, not both"
        )
    if not has_clip and not has_adaptive:
        raise FLConfigError(
            field("l2_norm_clip"), f"{field('l2_norm_clip')} (or adaptive_clipping) is required"
        )
    clip = _positive(given["l2_norm_clip"], field("l2_norm_clip")) if has_clip else None
    adaptive = (
        parse_adaptive_clipping(given["adaptive_clipping"], field("adaptive_clipping"))
        if has_adaptive
        else None
    )
    if adaptive is not None and mode == "local":
        # The clip norm adapts from the server's count of unclipped updates, which only the
        # central mode (the server clips) has.
        raise FLConfigError(field("adaptive_clipping"), "adaptive_clipping needs mode 'central'")
    delta = read_float(
        required("delta"),
        field("delta"),
        FLConfigError,
        minimum=0.0,
        maximum=1.0,
        min_exclusive=True,
        max_exclusive=True,
    )
    max_epsilon = given.get("max_epsilon")
    sampling_rate = given.get("sampling_rate")
    return DPConfig(
        mode=mode,
        noise_multiplier=noise,
        delta=delta,
        l2_norm_clip=clip,
        adaptive=adaptive,
        max_epsilon=None if max_epsilon is None else _positive(max_epsilon, field("max_epsilon")),
        sampling_rate=(
            None
            if sampling_rate is None
            else read_float(
                sampling_rate,
                field("sampling_rate"),
                FLConfigError,
                minimum=0.0,
                maximum=1.0,
                min_exclusive=True,
            )
        ),
    )


def parse_differential_privacy(
    privacy_config: Mapping[str, Any] | None, prefix: str = "privacy_config"
) -> DPConfig | None:
    """The DP settings of a session's ``privacy_config`` (either form), or ``None`` without DP.

    Unknown keys inside the nested object are refused; in the flat form the sibling keys are
    shared with secure aggregation, so :func:`parity.core.fl.privacy_config.parse_privacy_config`
    checks them."""
    if privacy_config is None:
        return None
    config = read_mapping(privacy_config, prefix, FLConfigError)
    flag_field = f"{prefix}.differential_privacy"
    value = config.get("differential_privacy")
    if value is None or value is False:
        return None
    if value is True:
        return parse_dp_fields(config, prefix)
    if isinstance(value, Mapping):
        refuse_unknown(value, DP_FIELDS, flag_field)
        return parse_dp_fields(value, flag_field)
    raise FLConfigError(flag_field, f"{flag_field} must be an object, true or false")
