"""Client-level DP-FedAvg: clipping bounds every update, the noise has the configured scale in
both modes, adaptive clipping follows Andrew et al.'s update, Poisson sampling has its rate, the
accountant reproduces the reference epsilons (fl-anchors §5) and stops a session at its budget,
and every configuration error names its field."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from parity.core.fl.dp import (
    ClippedMean,
    adaptive_noise_multipliers,
    central_dp_round,
    clip_update,
    joint_l2_norm,
    local_dp_update,
    model_delta,
    next_clip_norm,
    sample_participants,
)
from parity.core.fl.dp_accountant import (
    epsilon,
    epsilon_after,
    rounds_within_budget,
    would_exceed_budget,
)
from parity.core.fl.dp_config import AdaptiveClipping, DPConfig, parse_differential_privacy
from parity.core.fl.errors import FLConfigError
from parity.core.fl.privacy_config import parse_privacy_config
from parity.core.fl.privacy_errors import IncompatibleOptionsError

SHAPES = {"fc1.weight": (32, 64), "fc1.bias": (32,), "fc2.weight": (10, 32), "fc2.bias": (10,)}


def model(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {n: (rng.normal(0, scale, s)).astype(np.float32) for n, s in SHAPES.items()}


def zeros() -> dict[str, np.ndarray]:
    return {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}


def fixed(z: float = 1.0, clip: float = 1.0, **extra: Any) -> DPConfig:
    return DPConfig(mode="central", noise_multiplier=z, delta=1e-5, l2_norm_clip=clip, **extra)


# ---------------------------------------------------------------------------- clipping


def test_clipping_bounds_every_update_and_keeps_its_direction() -> None:
    rng = np.random.default_rng(0)
    global_weights = model(rng)
    for scale in (1e-4, 0.01, 0.1, 1.0, 10.0, 1e3):
        local = {n: a + rng.normal(0, scale, a.shape) for n, a in global_weights.items()}
        delta = model_delta(local, global_weights)
        clipped = clip_update(delta, 0.5)
        assert joint_l2_norm(clipped.delta) <= 0.5 * (1 + 1e-12)
        assert clipped.norm == pytest.approx(joint_l2_norm(delta))
        ratio = joint_l2_norm(clipped.delta) / clipped.norm
        for name in SHAPES:  # one factor for every tensor: the direction is kept
            assert np.allclose(clipped.delta[name], delta[name] * ratio)
        if clipped.norm <= 0.5:
            assert not clipped.clipped and ratio == pytest.approx(1.0)


def test_clipping_refuses_non_finite_updates() -> None:
    delta = {"w": np.array([1.0, np.nan])}
    with pytest.raises(FLConfigError, match="NaN or infinity"):
        clip_update(delta, 1.0)


def test_every_update_in_a_central_round_contributes_at_most_the_clip() -> None:
    rng = np.random.default_rng(1)
    global_weights = zeros()
    locals_ = [model(rng, scale) for scale in (0.001, 0.1, 5.0, 100.0)]
    result = central_dp_round(fixed(z=0.0, clip=1.0), global_weights, locals_, rng)
    # Without noise the step is the mean of the clipped deltas: each at most C / m.
    expected = {n: np.zeros(s) for n, s in SHAPES.items()}
    for local in locals_:
        clipped = clip_update(model_delta(local, global_weights), 1.0)
        assert joint_l2_norm(clipped.delta) <= 1.0 + 1e-9
        for n in SHAPES:
            expected[n] += clipped.delta[n] / 4
    for n in SHAPES:
        assert np.allclose(result.weights[n], expected[n], atol=1e-6)
    assert result.num_clipped == 3 and result.num_updates == 4
    assert joint_l2_norm(result.weights) <= 1.0 + 1e-6


# ---------------------------------------------------------------------------- noise scale


def test_central_noise_has_standard_deviation_z_c_over_m() -> None:
    rng = np.random.default_rng(2)
    z, clip, m = 1.3, 0.7, 8
    result = central_dp_round(fixed(z=z, clip=clip), zeros(), [zeros() for _ in range(m)], rng)
    noise = np.concatenate([a.ravel() for a in result.weights.values()]).astype(np.float64)
    sigma = z * clip / m
    assert result.noise_std == pytest.approx(sigma)
    # 2,410 coordinates: the sample sd is within ~1.5 % (1 sd) of sigma; allow 6 %.
    assert np.std(noise) == pytest.approx(sigma, rel=0.06)
    assert abs(np.mean(noise)) < 4 * sigma / math.sqrt(noise.size)


def test_local_noise_has_standard_deviation_z_c_and_is_seeded() -> None:
    z, clip = 0.8, 2.0
    config = DPConfig(mode="local", noise_multiplier=z, delta=1e-5, l2_norm_clip=clip)
    global_weights = model(np.random.default_rng(3))
    sent, record = local_dp_update(config, global_weights, global_weights, np.random.default_rng(4))
    assert not record.clipped
    noise = np.concatenate([(sent[n] - global_weights[n]).ravel() for n in SHAPES])
    assert np.std(noise) == pytest.approx(z * clip, rel=0.06)
    again, _ = local_dp_update(config, global_weights, global_weights, np.random.default_rng(4))
    assert all(np.array_equal(sent[n], again[n]) for n in SHAPES)


def test_the_streaming_mean_equals_the_batch_round() -> None:
    rng = np.random.default_rng(5)
    global_weights = model(rng)
    locals_ = [model(rng) for _ in range(5)]
    accumulator = ClippedMean(global_weights, 3.0)
    for local in locals_:
        accumulator.add(local)
    streamed = accumulator.noised_mean(0.5, np.random.default_rng(9))
    batch = central_dp_round(
        fixed(z=0.5, clip=3.0), global_weights, locals_, np.random.default_rng(9)
    )
    for n in SHAPES:
        assert np.allclose(global_weights[n] + streamed[n], batch.weights[n], atol=1e-5)


# ---------------------------------------------------------------------------- adaptive clipping


def test_adaptive_noise_split_costs_the_same_as_one_gaussian_mechanism() -> None:
    z_update, stddev = adaptive_noise_multipliers(1.0, 100)
    assert stddev == 5.0  # m / 20
    assert (z_update**-2 + (2 * stddev) ** -2) ** -0.5 == pytest.approx(1.0)
    assert z_update > 1.0
    with pytest.raises(FLConfigError, match="too small for noise_multiplier") as caught:
        adaptive_noise_multipliers(1.0, 10)  # sigma_b = 0.5: needs z < 1
    assert caught.value.field.endswith("adaptive_clipping.clipped_count_stddev")


def test_the_clip_norm_moves_geometrically_toward_the_target_quantile() -> None:
    adaptive = AdaptiveClipping(initial=1.0, target_quantile=0.5, learning_rate=0.2)
    rng = np.random.default_rng(6)
    # Noise-free count: all under C shrinks it by exp(-0.2 * 0.5), none under grows it.
    assert next_clip_norm(1.0, 10, 10, adaptive, 0.0, rng) == pytest.approx(math.exp(-0.1))
    assert next_clip_norm(1.0, 0, 10, adaptive, 0.0, rng) == pytest.approx(math.exp(0.1))
    assert next_clip_norm(2.0, 5, 10, adaptive, 0.0, rng) == pytest.approx(2.0)


def test_adaptive_clipping_converges_near_the_target_quantile_of_update_norms() -> None:
    config = DPConfig(
        mode="central",
        noise_multiplier=0.0,
        delta=1e-5,
        adaptive=AdaptiveClipping(initial=0.01, target_quantile=0.5, learning_rate=0.2),
    )
    rng = np.random.default_rng(7)
    global_weights = zeros()
    clip = None
    for _ in range(150):
        locals_ = [
            {n: a + rng.normal(0, 0.02, a.shape) for n, a in zeros().items()} for _ in range(20)
        ]
        result = central_dp_round(config, global_weights, locals_, rng, clip_norm=clip)
        clip = result.next_clip_norm
    # Update norms concentrate at 0.02 * sqrt(2410) ~ 0.98; the median is about that.
    assert clip == pytest.approx(0.02 * math.sqrt(2410), rel=0.1)


# ---------------------------------------------------------------------------- sampling


def test_participant_sampling_has_rate_q_and_is_seeded() -> None:
    candidates = [f"runner-{i}" for i in range(1000)]
    chosen = sample_participants(candidates, 0.1, np.random.default_rng(8))
    assert 70 <= len(chosen) <= 130  # binomial(1000, 0.1): sd 9.5
    assert chosen == sample_participants(candidates, 0.1, np.random.default_rng(8))
    assert chosen == [c for c in candidates if c in set(chosen)]  # order kept
    assert sample_participants(candidates, 1.0, np.random.default_rng(0)) == candidates


# ---------------------------------------------------------------------------- accountant

# fl-anchors §5 (dp-accounting 0.6.0): z, q, T, delta, epsilon (RDP), epsilon (PLD), decimals.
REFERENCE = [
    (1.0, 0.01, 1000, 1e-6, 2.437, 2.125, 3),
    (1.0, 0.1, 100, 1e-5, 7.904, 7.047, 3),
    (0.5, 0.01, 1000, 1e-6, 17.568, 15.484, 3),
    (1.0, 1.0, 50, 1e-5, 57.30, 54.38, 2),
]


@pytest.mark.parametrize(("z", "q", "rounds", "delta", "rdp", "pld", "decimals"), REFERENCE)
def test_the_accountant_reproduces_the_reference_table(
    z: float, q: float, rounds: int, delta: float, rdp: float, pld: float, decimals: int
) -> None:
    # The table prints 3 (last row: 2) decimals: equal after rounding, i.e. within 5e-4
    # (5e-3 for the last row, whose 2-decimal figures are all the table gives).
    tolerance = 0.5 * 10**-decimals + 1e-9
    assert abs(epsilon(z, rounds, delta, q, "rdp") - rdp) <= tolerance
    assert abs(epsilon(z, rounds, delta, q, "pld") - pld) <= tolerance


def test_epsilon_is_zero_before_any_round_infinite_without_noise_and_grows() -> None:
    assert epsilon(1.0, 0, 1e-5, 0.1) == 0.0
    assert epsilon(0.0, 10, 1e-5, 0.1) == math.inf
    values = [epsilon(1.0, t, 1e-5, 0.1) for t in (1, 10, 50, 100)]
    assert values == sorted(values) and len(set(values)) == 4


def test_the_budget_stops_the_session_before_the_round_that_would_pass_it() -> None:
    base = fixed(z=1.0, sampling_rate=0.1)
    eps_20, eps_21 = epsilon_after(base, 20), epsilon_after(base, 21)
    config = fixed(z=1.0, sampling_rate=0.1, max_epsilon=(eps_20 + eps_21) / 2)
    assert not would_exceed_budget(config, 19)  # round 20 stays within
    assert would_exceed_budget(config, 20)  # round 21 would pass it
    assert rounds_within_budget(config, 1000) == 20
    assert rounds_within_budget(base, 1000) == 1000  # no budget
    assert not would_exceed_budget(base, 10_000)


# ---------------------------------------------------------------------------- configuration

NESTED = {
    "mode": "central",
    "noise_multiplier": 1.0,
    "l2_norm_clip": 1.0,
    "delta": 1e-5,
    "max_epsilon": 8.0,
    "sampling_rate": 0.1,
}


def test_the_nested_and_the_flat_form_give_the_same_config() -> None:
    nested = parse_differential_privacy({"differential_privacy": NESTED})
    flat = parse_differential_privacy({"differential_privacy": True, **NESTED})
    assert nested == flat
    assert nested == DPConfig(
        "central", 1.0, 1e-5, l2_norm_clip=1.0, max_epsilon=8.0, sampling_rate=0.1
    )
    assert (
        parse_differential_privacy({"differential_privacy": False, "noise_multiplier": 1}) is None
    )
    assert parse_differential_privacy(None) is None


def test_the_flat_form_still_requires_the_fields_the_original_lacked() -> None:
    original = {"differential_privacy": True, "noise_multiplier": 1.1, "l2_norm_clip": 1.0}
    with pytest.raises(FLConfigError) as caught:
        parse_differential_privacy(original)
    assert caught.value.field == "privacy_config.mode"
    with pytest.raises(FLConfigError) as caught:
        parse_differential_privacy({**original, "mode": "local"})
    assert caught.value.field == "privacy_config.delta"
    assert "is required" in caught.value.reason


def test_adaptive_clipping_is_parsed_and_exclusive_with_a_fixed_clip() -> None:
    adaptive = {"initial": 0.1, "target_quantile": 0.5, "learning_rate": 0.2}
    given = {**NESTED, "l2_norm_clip": None, "adaptive_clipping": adaptive}
    config = parse_differential_privacy({"differential_privacy": given})
    assert config is not None and config.adaptive == AdaptiveClipping(0.1, 0.5, 0.2)
    assert config.initial_clip == 0.1
    with pytest.raises(FLConfigError, match="not both"):
        parse_differential_privacy(
            {"differential_privacy": {**NESTED, "adaptive_clipping": adaptive}}
        )
    with pytest.raises(FLConfigError, match="needs mode 'central'"):
        parse_differential_privacy({"differential_privacy": {**given, "mode": "local"}})


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"mode": "global"}, "mode", "'central' or 'local'"),
        ({"noise_multiplier": None}, "noise_multiplier", "is required"),
        ({"noise_multiplier": -0.1}, "noise_multiplier", "at least 0"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier", "finite"),
        ({"noise_multiplier": float("inf")}, "noise_multiplier", "finite"),
        ({"noise_multiplier": "1.0"}, "noise_multiplier", "must be a number"),
        ({"l2_norm_clip": None}, "l2_norm_clip", "is required"),
        ({"l2_norm_clip": 0}, "l2_norm_clip", "greater than 0"),
        ({"l2_norm_clip": float("inf")}, "l2_norm_clip", "finite"),
        ({"delta": None}, "delta", "is required"),
        ({"delta": 0}, "delta", "greater than 0"),
        ({"delta": 1.0}, "delta", "less than 1"),
        ({"delta": float("nan")}, "delta", "finite"),
        ({"max_epsilon": 0}, "max_epsilon", "greater than 0"),
        ({"max_epsilon": float("inf")}, "max_epsilon", "finite"),
        ({"sampling_rate": 0}, "sampling_rate", "greater than 0"),
        ({"sampling_rate": 1.5}, "sampling_rate", "at most 1"),
        ({"noise_multipler": 1.0}, "noise_multipler", "unknown field"),
        (
            {"l2_norm_clip": None, "adaptive_clipping": {"initial": 0.1, "learning_rate": 0.2}},
            "adaptive_clipping.target_quantile",
            "is required",
        ),
        (
            {
                "l2_norm_clip": None,
                "adaptive_clipping": {"initial": 0.1, "target_quantile": 1.5, "learning_rate": 0.2},
            },
            "adaptive_clipping.target_quantile",
            "at most 1",
        ),
    ],
)
def test_each_bad_dp_field_is_named(change: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(FLConfigError) as caught:
        parse_differential_privacy({"differential_privacy": {**NESTED, **change}})
    assert caught.value.field == f"privacy_config.differential_privacy.{field}"
    assert message in caught.value.reason


def test_the_privacy_config_refuses_stray_and_misplaced_keys() -> None:
    with pytest.raises(FLConfigError) as caught:
        parse_privacy_config({"differential_privacy": NESTED, "noise_multiplier": 2.0})
    assert caught.value.field == "privacy_config.noise_multiplier"
    reason = caught.value.reason
    assert reason.startswith("unknown field 'noise_multiplier'; valid: ")
    assert reason.endswith(
        " (it belongs inside the differential_privacy or secure_aggregation object)"
    )
    valid = reason.split("valid: ")[1].split(" (")[0].split(", ")
    # The DP object is nested, so no flat DP field is valid beside it; flat SecAgg fields are.
    assert "differential_privacy" in valid and "num_shares" in valid
    assert "noise_multiplier" not in valid and "l2_norm_clip" not in valid
    with pytest.raises(FLConfigError) as caught:
        parse_privacy_config({"encryption": True})
    # The flat form (flags beside their fields, as the original API sent it): those are valid.
    assert caught.value.reason.startswith("unknown field 'encryption'; valid: ")
    assert "noise_multiplier" in caught.value.reason and "(it belongs" not in caught.value.reason
    with pytest.raises(FLConfigError, match="must be an object, true or false"):
        parse_privacy_config({"differential_privacy": "yes"})
    assert not parse_privacy_config(None).enabled


def test_central_dp_with_a_median_is_incompatible_and_local_dp_is_not() -> None:
    with pytest.raises(IncompatibleOptionsError) as caught:
        parse_privacy_config({"differential_privacy": NESTED}, aggregation_method="median")
    assert caught.value.field == "privacy_config.differential_privacy"
    local = {**NESTED, "mode": "local"}
    parsed = parse_privacy_config({"differential_privacy": local}, aggregation_method="krum")
    assert parsed.differential_privacy is not None


def test_adaptive_clipping_with_secure_aggregation_or_too_few_participants_is_refused() -> None:
    adaptive = {"initial": 0.1, "target_quantile": 0.5, "learning_rate": 0.2}
    dp = {**NESTED, "l2_norm_clip": None, "adaptive_clipping": adaptive}
    secagg = {
        "mode": "secagg_plus",
        "num_shares": 5,
        "reconstruction_threshold": 3,
        "clipping_range": 8.0,
        "quantization_range": 2**22,
        "stage_timeout_seconds": 30,
    }
    with pytest.raises(IncompatibleOptionsError, match="secure aggregation hides"):
        parse_privacy_config({"differential_privacy": dp, "secure_aggregation": secagg})
    with pytest.raises(FLConfigError) as caught:
        parse_privacy_config({"differential_privacy": dp}, min_participants=10)
    assert caught.value.field == (
        "privacy_config.differential_privacy.adaptive_clipping.clipped_count_stddev"
    )
    parse_privacy_config({"differential_privacy": dp}, min_participants=100)
