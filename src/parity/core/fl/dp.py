"""Client-level differential privacy for FedAvg (DP-FedAvg), pure numpy.

McMahan et al. 2018 ("Learning Differentially Private Recurrent Language Models"): each
participant's contribution is its *update* ``delta = local - global``, clipped to an L2 norm C
taken over all tensors together, so that one participant moves the sum by at most C. Then:

- **central** mode (:func:`central_dp_round`, or :class:`ClippedMean` to fold updates in as they
  arrive): the server clips, averages the m clipped deltas (unweighted: an example-weighted mean
  would let one participant's weight scale its influence past C) and adds Gaussian noise
  ``N(0, sigma^2)`` per coordinate with ``sigma = z * C / m`` to the mean;
- **local** mode (:func:`local_dp_update`): each runner clips its own delta and adds
  ``N(0, (z * C)^2)`` before sending, so the server never sees a clean update;
- **adaptive clipping** (Andrew et al. 2021, "Differentially Private Learning with Adaptive
  Clipping"): after each round ``C <- C * exp(-eta * (b - gamma))`` where b is the noised share
  of updates that were under C and gamma the target quantile (:func:`next_clip_norm`); the
  budget is split between the update noise and the count noise
  (:func:`adaptive_noise_multipliers`) so the round as a whole is a Gaussian mechanism with
  multiplier z;
- **participant sampling** (:func:`sample_participants`): Poisson sampling with rate q, the
  amplification the accountant (:mod:`.dp_accountant`) assumes.

Randomness comes only from the ``numpy.random.Generator`` passed in, so a round is reproducible
from its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from parity.core.fl.aggregation import TensorMap, Weights, check_same_layout
from parity.core.fl.dp_config import AdaptiveClipping, DPConfig
from parity.core.fl.errors import AggregationError, FLConfigError

__all__ = [
    "ClippedMean",
    "ClippedUpdate",
    "DPRoundResult",
    "Deltas",
    "adaptive_noise_multipliers",
    "add_central_noise",
    "add_gaussian_noise",
    "central_dp_round",
    "clip_update",
    "joint_l2_norm",
    "local_dp_update",
    "model_delta",
    "next_clip_norm",
    "sample_participants",
]

Deltas = dict[str, NDArray[np.float64]]
T = TypeVar("T")


def model_delta(local: TensorMap, global_weights: TensorMap, which: str = "update") -> Deltas:
    """``local - global`` per tensor in float64, after checking ``local`` has the global layout."""
    check_same_layout(global_weights, local, which)
    return {
        name: np.asarray(local[name], dtype=np.float64) - np.asarray(array, dtype=np.float64)
        for name, array in global_weights.items()
    }


def joint_l2_norm(tensors: TensorMap) -> float:
    """The L2 norm of all tensors taken as one vector (float64)."""
    total = 0.0
    for array in tensors.values():
        flat = np.asarray(array, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


@dataclass(frozen=True)
class ClippedUpdate:
    """A delta scaled to norm at most ``clip_norm``; ``norm`` is its norm before clipping."""

    delta: Deltas
    norm: float
    clip_norm: float

    @property
    def clipped(self) -> bool:
        return self.norm > self.clip_norm


def clip_update(delta: TensorMap, clip_norm: float) -> ClippedUpdate:
    """Scale ``delta`` by ``min(1, C / ||delta||)`` (one factor for all tensors, so its
    direction is kept). Non-finite values are refused: they would defeat the bound."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise FLConfigError("l2_norm_clip", "the clip norm must be a positive finite number")
    norm = joint_l2_norm(delta)
    if not math.isfinite(norm):
        raise AggregationError("weights", "the update contains NaN or infinity")
    scale = 1.0 if norm <= clip_norm else clip_norm / norm
    clipped = {name: np.asarray(a, dtype=np.float64) * scale for name, a in delta.items()}
    return ClippedUpdate(clipped, norm, clip_norm)


def add_gaussian_noise(tensors: TensorMap, std: float, rng: np.random.Generator) -> Deltas:
    """``tensors + N(0, std^2)`` independently per coordinate, in float64 (tensors in their
    mapping order, so a seed gives the same noise for the same layout)."""
    if not (math.isfinite(std) and std >= 0):
        raise FLConfigError("noise_multiplier", "the noise standard deviation must be finite")
    return {
        name: np.asarray(a, dtype=np.float64) + rng.normal(0.0, std, size=np.shape(a))
        if std > 0
        else np.asarray(a, dtype=np.float64).copy()
        for name, a in tensors.items()
    }


def adaptive_noise_multipliers(
    noise_multiplier: float, num_updates: int, clipped_count_stddev: float | None = None
) -> tuple[float, float]:
    """``(z_update, count_stddev)`` for adaptive clipping with m = ``num_updates``.

    Andrew et al. §3.1: releasing the noised count with stddev sigma_b and the noised mean with
    multiplier z_update together cost as much as one Gaussian mechanism with
    ``z = (z_update^-2 + (2 sigma_b)^-2)^-1/2``, hence ``z_update = (z^-2 - (2 sigma_b)^-2)^-1/2``,
    which needs ``z < 2 sigma_b``. ``sigma_b`` defaults to the paper's m / 20."""
    if noise_multiplier == 0:
        return 0.0, 0.0
    stddev = num_updates / 20 if clipped_count_stddev is None else clipped_count_stddev
    if noise_multiplier >= 2 * stddev:
        raise FLConfigError(
            "privacy_config.differential_privacy.adaptive_clipping.clipped_count_stddev",
            f"the count noise stddev {stddev:g} (m/20 for m={num_updates} updates unless given) "
            f"is too small for noise_multiplier {noise_multiplier:g}: it must exceed z/2",
        )
    z_update = (noise_multiplier**-2 - (2 * stddev) ** -2) ** -0.5
    return z_update, stddev


def next_clip_norm(
    clip_norm: float,
    unclipped: int,
    num_updates: int,
    adaptive: AdaptiveClipping,
    count_stddev: float,
    rng: np.random.Generator,
) -> float:
    """Andrew et al.'s geometric update: ``C * exp(-eta * (b - gamma))`` with
    ``b = (unclipped + N(0, count_stddev^2)) / m``. Too many updates under C (b above the
    target quantile gamma) shrinks C; too few grows it."""
    if num_updates <= 0:
        raise AggregationError("updates", "no updates to adapt the clip norm from")
    noise = rng.normal(0.0, count_stddev) if count_stddev > 0 else 0.0
    share = (unclipped + noise) / num_updates
    return float(clip_norm * math.exp(-adaptive.learning_rate * (share - adaptive.target_quantile)))


class ClippedMean:
    """Running sum of clipped deltas against one global model: ``add`` each participant's model
    as it arrives, then :meth:`noised_mean`. Memory stays one model."""

    def __init__(self, global_weights: TensorMap, clip_norm: float) -> None:
        self.global_weights = global_weights
        self.clip_norm = clip_norm
        self._sum: Deltas = {
            n: np.zeros(np.shape(a), np.float64) for n, a in global_weights.items()
        }
        self.count = 0
        self.unclipped = 0
        self.norms: list[float] = []

    def add(self, local: TensorMap) -> ClippedUpdate:
        clipped = clip_update(
            model_delta(local, self.global_weights, f"update {self.count}"), self.clip_norm
        )
        for name, total in self._sum.items():
            total += clipped.delta[name]
        self.count += 1
        self.unclipped += 0 if clipped.clipped else 1
        self.norms.append(clipped.norm)
        return clipped

    def noised_mean(self, noise_multiplier: float, rng: np.random.Generator) -> Deltas:
        """Mean clipped delta plus ``N(0, (z * C / m)^2)`` per coordinate."""
        if self.count == 0:
            raise AggregationError("updates", "no updates to aggregate")
        mean = {name: total / self.count for name, total in self._sum.items()}
        return add_gaussian_noise(mean, noise_multiplier * self.clip_norm / self.count, rng)


@dataclass(frozen=True)
class DPRoundResult:
    """A DP round's next global model and what the round's metrics report."""

    weights: Weights
    clip_norm: float
    next_clip_norm: float
    noise_std: float
    num_updates: int
    num_clipped: int

    def metrics(self) -> dict[str, Any]:
        return {
            "dp_clip_norm": self.clip_norm,
            "dp_next_clip_norm": self.next_clip_norm,
            "dp_noise_std": self.noise_std,
            "dp_num_updates": self.num_updates,
            "dp_num_clipped": self.num_clipped,
        }


def central_dp_round(
    config: DPConfig,
    global_weights: TensorMap,
    local_models: Sequence[TensorMap],
    rng: np.random.Generator,
    *,
    clip_norm: float | None = None,
) -> DPRoundResult:
    """One central-mode DP-FedAvg step: ``global + mean(clip(local_i - global)) + noise``.

    ``clip_norm`` is the round's C under adaptive clipping (the previous round's
    ``next_clip_norm``; the configured initial value when ``None``); a fixed clip ignores it."""
    if not local_models:
        raise AggregationError("updates", "no updates to aggregate")
    if config.adaptive is None:
        clip = config.initial_clip
    else:
        clip = config.adaptive.initial if clip_norm is None else clip_norm
    m = len(local_models)
    z_update, count_stddev = config.noise_multiplier, 0.0
    if config.adaptive is not None:
        z_update, count_stddev = adaptive_noise_multipliers(
            config.noise_multiplier, m, config.adaptive.clipped_count_stddev
        )
    accumulator = ClippedMean(global_weights, clip)
    for local in local_models:
        accumulator.add(local)
    mean = accumulator.noised_mean(z_update, rng)
    next_clip = clip
    if config.adaptive is not None:
        next_clip = next_clip_norm(
            clip, accumulator.unclipped, m, config.adaptive, count_stddev, rng
        )
    weights = {
        name: (np.asarray(array, dtype=np.float64) + mean[name]).astype(np.float32)
        for name, array in global_weights.items()
    }
    return DPRoundResult(
        weights, clip, next_clip, z_update * clip / m, m, m - accumulator.unclipped
    )


def add_central_noise(
    mean_delta: TensorMap,
    config: DPConfig,
    num_updates: int,
    rng: np.random.Generator,
) -> tuple[Deltas, float]:
    """Central-mode noise for a mean the server did not clip itself: with secure aggregation
    the runners clip their deltas to ``l2_norm_clip`` (and weigh every participant equally,
    ``num_examples = max_weight``) and the server, after unmasking the sum of m of them, adds
    ``N(0, (z * C / m)^2)`` to their mean. Returns the noised mean and the noise's sd."""
    if config.l2_norm_clip is None:
        raise FLConfigError("l2_norm_clip", "noise on a secure sum needs a fixed l2_norm_clip")
    if num_updates <= 0:
        raise AggregationError("updates", "no updates to aggregate")
    std = config.noise_multiplier * config.l2_norm_clip / num_updates
    return add_gaussian_noise(mean_delta, std, rng), std


def local_dp_update(
    config: DPConfig, local: TensorMap, global_weights: TensorMap, rng: np.random.Generator
) -> tuple[Weights, ClippedUpdate]:
    """A runner's local-mode step: the model it sends is
    ``global + clip(local - global) + N(0, (z * C)^2)`` (float32), with the clip record."""
    if config.l2_norm_clip is None:
        raise FLConfigError("l2_norm_clip", "local DP needs a fixed l2_norm_clip")
    clipped = clip_update(model_delta(local, global_weights), config.l2_norm_clip)
    noised = add_gaussian_noise(clipped.delta, config.noise_multiplier * config.l2_norm_clip, rng)
    weights = {
        name: (np.asarray(array, dtype=np.float64) + noised[name]).astype(np.float32)
        for name, array in global_weights.items()
    }
    return weights, clipped


def sample_participants(
    candidates: Sequence[T], sampling_rate: float, rng: np.random.Generator
) -> list[T]:
    """Poisson sampling: each candidate independently with probability q, in the given order.
    The count varies from round to round (it may be 0); the accountant assumes exactly this."""
    if not (0.0 < sampling_rate <= 1.0):
        raise FLConfigError("sampling_rate", "sampling_rate must be in (0, 1]")
    draws = rng.random(len(candidates))
    return [c for c, u in zip(candidates, draws, strict=True) if u < sampling_rate]
