"""Differential privacy in FL sessions, server side (client-level DP-FedAvg, McMahan et al. 2018).

The pure mechanisms and the accountant live in :mod:`parity.core.fl.dp` and
:mod:`parity.core.fl.dp_accountant`; this module applies them to a session:

- **create**: the validated ``differential_privacy`` settings are stored in one normalized form
  (:func:`stored_dp`; the original flat form maps to it) after the checks that need the session
  (:func:`check_session`): a ``max_epsilon`` that one round already exceeds, participant sampling
  with local noise, an adaptive clip whose count noise is too small for the sampled rounds;
- **open**: local mode sends ``{"mode": "local", "noise_multiplier", "l2_norm_clip"}`` in each
  ``fl_train`` task (:func:`task_privacy`), the runner clips and noises its own delta; with a
  ``sampling_rate`` q < 1 each round takes a Poisson sample of the participants
  (:func:`sample_round`);
- **aggregate**, central mode (:func:`central_round`): every accepted update's delta from the
  round's global model is clipped to C (fixed, or adaptive as Andrew et al. 2021), the clipped
  deltas are summed and divided by the *expected* number of updates ``q * N`` (a fixed
  denominator: one participant more or less moves the mean by at most ``C / (q N)`` whoever
  else reported), Gaussian noise ``sigma = z * C / (q N)`` is added to that mean, and the
  aggregation method finishes from the noised mean model (FedAvg takes it, FedAdam & co. step
  towards it). Participants count equally: an example-weighted mean would let one
  participant's weight scale its influence past C;
- **account**: every round, the epsilon for the session's delta after that many rounds
  (``"rdp"``: :func:`parity.core.fl.dp_accountant.epsilon_after`) goes into the round's metrics;
  the session read carries the running figure (:func:`session_privacy`); when the *next* round
  would pass ``max_epsilon`` the session fails with a reason starting ``budget_exhausted`` and
  keeps the last model within the budget (:func:`budget_stop`).

The noise comes from the operating system's entropy (:func:`noise_rng`), never from the
session's seed: the seed is part of the session read, and noise anyone can recompute protects
nothing. So, unlike a plain round, a central-DP round computed twice (a restart between compute
and apply) gives two different models; only the first is applied (the apply is conditional) and
the other is never referenced.

What the figures mean: epsilon bounds what the sequence of global models reveals about any one
participant's whole data set. With ten participants all taking part in every round it is far too
large to mean anything (z = 1, 50 rounds: about 57); a useful epsilon needs many participants and
q much smaller than 1. The sampling amplification holds against whoever sees only the models:
the rounds API lists who took part in each round, so towards the session's creator the
q = 1 figure is the safe one. ``epsilon`` is ``null`` when it is unbounded (noise multiplier 0).
"""

from __future__ import annotations

import asyncio
import functools
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from parity.core.fl.aggregation import TensorMap, Weights
from parity.core.fl.aggregators import AggregationResult, MethodConfig, aggregate_mean
from parity.core.fl.dp import (
    ClippedMean,
    adaptive_noise_multipliers,
    add_gaussian_noise,
    next_clip_norm,
    sample_participants,
)
from parity.core.fl.dp_accountant import (
    Accountant,
    epsilon_after,
    rounds_within_budget,
    would_exceed_budget,
)
from parity.core.fl.dp_config import DPConfig, parse_differential_privacy
from parity.core.fl.errors import FLConfigError
from parity.core.fl.fedopt import ServerOptState
from parity.core.fl.tensors import decode
from parity.errors import InvalidInput
from parity.fl import rounds_repository as repo
from parity.fl.models import FLRound, FLRoundSlot, FLSession

__all__ = [
    "ACCOUNTANT",
    "BUDGET_EXHAUSTED",
    "CentralRound",
    "RoundContext",
    "budget_stop",
    "central_config",
    "central_round",
    "check_session",
    "dp_of",
    "noise_rng",
    "round_context",
    "round_metrics",
    "sample_round",
    "session_privacy",
    "stored_dp",
    "task_privacy",
]

ACCOUNTANT: Accountant = "rdp"
BUDGET_EXHAUSTED = "budget_exhausted"
NEXT_CLIP = "dp_next_clip_norm"  # the round metric the next round's adaptive clip is read from
T = TypeVar("T")


# -- the session's settings --------------------------------------------------------------------


def dp_of(config: Mapping[str, Any]) -> DPConfig | None:
    """The DP settings of a stored session ``config`` (validated at create), or ``None``."""
    return parse_differential_privacy(config.get("privacy_config"))


def _secure_aggregation(config: Mapping[str, Any]) -> bool:
    privacy = config.get("privacy_config") or {}
    return privacy.get("secure_aggregation") not in (None, False)


def central_config(config: Mapping[str, Any]) -> DPConfig | None:
    """The settings when the server clips and noises each round itself: central mode without
    secure aggregation (with it the server never holds an individual update to clip; that path
    noises the unmasked sum)."""
    dp = dp_of(config)
    if dp is None or dp.mode != "central" or _secure_aggregation(config):
        return None
    return dp


def stored_dp(dp: DPConfig) -> dict[str, Any]:
    """The normalized ``differential_privacy`` object a session stores (either input form)."""
    out: dict[str, Any] = {"mode": dp.mode, "noise_multiplier": dp.noise_multiplier}
    if dp.adaptive is None:
        out["l2_norm_clip"] = dp.l2_norm_clip
    else:
        out["adaptive_clipping"] = {
            "initial": dp.adaptive.initial,
            "target_quantile": dp.adaptive.target_quantile,
            "learning_rate": dp.adaptive.learning_rate,
            "clipped_count_stddev": dp.adaptive.clipped_count_stddev,
        }
    out.update(delta=dp.delta, max_epsilon=dp.max_epsilon, sampling_rate=dp.sampling_rate)
    return out


def check_session(dp: DPConfig, raw: Mapping[str, Any], min_participants: int, prefix: str) -> None:
    """The create-time checks that need the session: a 422 naming the field. ``raw`` is the
    ``privacy_config`` as sent (to name fields where the caller put them), ``prefix`` its path."""
    nested = isinstance(raw.get("differential_privacy"), Mapping)
    where = f"{prefix}.differential_privacy" if nested else prefix
    q = dp.accounting_sampling_rate
    if q < 1.0 and dp.mode == "local":
        raise InvalidInput(
            f"{where}.sampling_rate",
            "participant sampling amplifies privacy only against parties who do not learn who "
            "was sampled; in local mode that is the server itself, so use mode 'central' or "
            "leave sampling_rate out",
            code="incompatible_options",
        )
    if dp.adaptive is not None and q < 1.0:
        try:
            adaptive_noise_multipliers(
                dp.noise_multiplier,
                _expected_count(q * min_participants),
                dp.adaptive.clipped_count_stddev,
            )
        except FLConfigError as exc:
            raise InvalidInput(
                f"{where}.adaptive_clipping.clipped_count_stddev",
                f"{exc.reason} (sampling_rate {q:g} of {min_participants} participants)",
            ) from None
    one = epsilon(dp, 1)
    if dp.max_epsilon is not None and (one is None or one > dp.max_epsilon):
        cost = "is unbounded (noise_multiplier 0)" if one is None else f"is {one:.4g}"
        raise InvalidInput(
            f"{where}.max_epsilon",
            f"max_epsilon {dp.max_epsilon:g} allows no round: epsilon after one round {cost} "
            f"at delta {dp.delta:g}; raise noise_multiplier or max_epsilon",
        )


@functools.lru_cache(maxsize=4096)
def _epsilon(dp: DPConfig, rounds: int) -> float:
    return epsilon_after(dp, rounds, ACCOUNTANT)


@functools.lru_cache(maxsize=1024)
def _within(dp: DPConfig, total_rounds: int) -> int:
    return rounds_within_budget(dp, total_rounds, ACCOUNTANT)


def epsilon(dp: DPConfig, rounds: int) -> float | None:
    """Epsilon at the session's delta after ``rounds`` rounds; ``None`` when unbounded."""
    value = _epsilon(dp, rounds)
    return value if math.isfinite(value) else None


# -- a round -----------------------------------------------------------------------------------


def noise_rng() -> np.random.Generator:
    """A generator seeded from the OS's entropy (see the module docstring: never a seed the
    session's readers could know)."""
    return np.random.default_rng(secrets.randbits(128))


def task_privacy(fl_session: FLSession) -> dict[str, Any] | None:
    """The ``privacy`` of an ``fl_train`` task: what a runner applies itself (local mode)."""
    dp = dp_of(fl_session.config)
    if dp is None or dp.mode != "local":
        return None
    return {
        "mode": "local",
        "noise_multiplier": dp.noise_multiplier,
        "l2_norm_clip": dp.l2_norm_clip,
    }


def sample_round(
    fl_session: FLSession, participants: list[T], population: int
) -> tuple[list[T], int]:
    """This round's participants and the round's size: every one of them and ``population``
    without sampling; a Poisson sample (possibly empty) and its size with ``sampling_rate``."""
    dp = dp_of(fl_session.config)
    if dp is None or dp.sampling_rate is None or dp.sampling_rate >= 1.0:
        return participants, population
    taken = sample_participants(participants, dp.sampling_rate, noise_rng())
    return taken, len(taken)


@dataclass(frozen=True)
class RoundContext:
    """What a central round reads from earlier rounds: its clip norm C (the previous round's
    adaptive update) and the session's participant count N (the fixed denominator is q N)."""

    clip_norm: float
    population: int


async def round_context(
    session: AsyncSession, fl_session: FLSession, round_: FLRound
) -> RoundContext | None:
    """The context of a central-DP round (``None`` for any other round)."""
    dp = central_config(fl_session.config)
    if dp is None:
        return None
    population = len(await repo.active_participants(session, fl_session.id))
    clip = dp.initial_clip
    if dp.adaptive is not None and round_.number > 1:
        q = select(FLRound.metrics).where(
            FLRound.session_id == fl_session.id, FLRound.number == round_.number - 1
        )
        before = await session.scalar(q)
        if before and before.get(NEXT_CLIP) is not None:
            clip = float(before[NEXT_CLIP])
    return RoundContext(clip, population)


def _expected_count(expected: float) -> int:
    return max(1, round(expected))


class CentralRound:
    """One central-DP round: ``add`` each accepted model as it is read (memory stays one model),
    then :meth:`finish`. Pure: the caller gives the generator."""

    def __init__(self, dp: DPConfig, reference: TensorMap, context: RoundContext) -> None:
        self.dp = dp
        # Noise is drawn tensor by tensor in name order (a decoded model's order varies).
        self.reference = dict(sorted(reference.items()))
        self.clip_norm = context.clip_norm
        # The fixed denominator: the expected number of updates, q * N.
        self.expected = max(dp.accounting_sampling_rate * context.population, 1e-12)
        self.clipped = ClippedMean(self.reference, context.clip_norm)

    def add(self, local: TensorMap) -> float:
        """Clip one participant's delta into the sum; returns its norm before clipping."""
        return self.clipped.add(local).norm

    def finish(self, rng: np.random.Generator) -> tuple[Weights, dict[str, Any]]:
        """The noised mean model ``reference + sum(clipped) / (q N) + N(0, sigma^2)`` and the
        round's DP figures."""
        dp, count = self.dp, self.clipped.count
        z_update, count_std = dp.noise_multiplier, 0.0
        if dp.adaptive is not None:
            z_update, count_std = adaptive_noise_multipliers(
                dp.noise_multiplier,
                _expected_count(self.expected),
                dp.adaptive.clipped_count_stddev,
            )
        if count:
            # ClippedMean divides by the count; the fixed denominator replaces it.
            mean = self.clipped.noised_mean(0.0, rng)
            total = {n: a * (count / self.expected) for n, a in mean.items()}
        else:  # a sampled round that drew nobody (or lost everyone): noise alone
            total = {n: np.zeros(np.shape(a), np.float64) for n, a in self.reference.items()}
        std = z_update * self.clip_norm / self.expected
        noised = add_gaussian_noise(total, std, rng)
        next_clip = self.clip_norm
        if dp.adaptive is not None:
            next_clip = next_clip_norm(
                self.clip_norm,
                self.clipped.unclipped,
                _expected_count(self.expected),
                dp.adaptive,
                count_std,
                rng,
            )
        weights = {
            n: (np.asarray(a, dtype=np.float64) + noised[n]).astype(np.float32)
            for n, a in self.reference.items()
        }
        return weights, {
            "dp_clip_norm": self.clip_norm,
            NEXT_CLIP: next_clip,
            "dp_noise_std": std,
            "dp_expected_updates": self.expected,
            "dp_num_updates": count,
            "dp_num_clipped": count - self.clipped.unclipped,
        }


async def central_round(
    fl_session: FLSession,
    round_: FLRound,
    slots: Sequence[FLRoundSlot],
    reference: Weights,
    method: MethodConfig,
    state: ServerOptState | None,
    read: Callable[[FLRoundSlot], Awaitable[bytes]],
    context: RoundContext | None = None,
) -> tuple[AggregationResult, dict[str, Any]] | None:
    """Aggregate a central-DP round (``None`` when the session is not one): each update read
    with ``read``, clipped and summed off the event loop, the noised mean handed to the
    method's server step. Without ``context`` the round's own participant count and the
    initial clip are used."""
    dp = central_config(fl_session.config)
    if dp is None:
        return None
    ctx = context or RoundContext(dp.initial_clip, round_.participants)
    fold = CentralRound(dp, reference, ctx)

    def add(data: bytes) -> None:
        fold.add(decode(data))

    for slot in slots:
        await asyncio.to_thread(add, await read(slot))
    mean, figures = await asyncio.to_thread(fold.finish, noise_rng())
    result = await asyncio.to_thread(aggregate_mean, method, reference, mean, state)
    return result, figures


def round_metrics(fl_session: FLSession, number: int) -> dict[str, Any]:
    """The DP figures every DP round reports: the mode and epsilon after ``number`` rounds."""
    dp = dp_of(fl_session.config)
    if dp is None:
        return {}
    return {"dp_mode": dp.mode, "epsilon": epsilon(dp, number), "dp_delta": dp.delta}


# -- the budget --------------------------------------------------------------------------------


def budget_stop(fl_session: FLSession, rounds_done: int) -> str | None:
    """The failure reason when the round after ``rounds_done`` would pass ``max_epsilon``
    (``None`` when it fits, or without a budget)."""
    dp = dp_of(fl_session.config)
    if dp is None or dp.max_epsilon is None or not would_exceed_budget(dp, rounds_done, ACCOUNTANT):
        return None
    now, then = epsilon(dp, rounds_done), epsilon(dp, rounds_done + 1)
    spent = "unbounded" if now is None else f"{now:.4g}"
    next_ = "unbounded" if then is None else f"{then:.4g}"
    return (
        f"{BUDGET_EXHAUSTED}: epsilon is {spent} after round {rounds_done} and round "
        f"{rounds_done + 1} would take it to {next_}, past max_epsilon {dp.max_epsilon:g} "
        f"(delta {dp.delta:g}, {ACCOUNTANT} accountant); the global model stays round "
        f"{rounds_done}'s"
    )


def session_privacy(fl_session: FLSession) -> dict[str, Any] | None:
    """The session read's ``privacy``: the DP budget spent by the completed rounds."""
    dp = dp_of(fl_session.config)
    if dp is None:
        return None
    done = fl_session.global_model_round or 0
    return {
        "mode": dp.mode,
        "accountant": ACCOUNTANT,
        "rounds": done,
        "epsilon": epsilon(dp, done),
        "delta": dp.delta,
        "noise_multiplier": dp.noise_multiplier,
        "sampling_rate": dp.accounting_sampling_rate,
        "max_epsilon": dp.max_epsilon,
        "rounds_within_budget": _within(dp, fl_session.total_rounds),
        "budget_exhausted": would_exceed_budget(dp, done, ACCOUNTANT),
    }
