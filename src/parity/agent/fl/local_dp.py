"""Differential privacy on the runner: the ``fl_train`` task's ``privacy``.

A session in local mode sends every participant ``{"mode": "local", "noise_multiplier": z,
"l2_norm_clip": C}``. After training, the runner clips its update ``delta = local - global``
to L2 norm C (over all tensors together) and adds ``N(0, (z C)^2)`` to every coordinate
(:func:`parity.core.fl.dp.local_dp_update`), so the model it posts is
``global + clip(delta) + noise`` and the server never sees the clean update. The noise is drawn
from the operating system's entropy (:func:`noise_rng`), not from the task's seed: the server
chose that seed and could subtract noise made from it.

A central-mode session with secure aggregation sends ``{"mode": "central", "l2_norm_clip": C}``
in a SecAgg+ round's tasks: the server adds the noise to the unmasked sum, but it never sees an
individual update, so it cannot clip one. The runner clips its delta to C the same way (the
same step without noise) before the update is quantized and masked, and weighs it fully (see
:mod:`parity.agent.fl.secagg`). Central mode outside a SecAgg+ round is refused: there the
server clips, and a task asking the runner to is not one this server sends.

Any other ``privacy`` (another mode, a feature this runner does not apply) is left in the task
config, where :func:`parity.agent.fl.config.parse_fl_task` refuses it: training without the
protection the session asked for would give away what it protects.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from parity.agent.fl.config import FlTaskError
from parity.core.fl._params import read_float
from parity.core.fl.aggregation import Weights
from parity.core.fl.dp import joint_l2_norm, local_dp_update, model_delta
from parity.core.fl.dp_config import DPConfig
from parity.core.fl.train import TrainResult

__all__ = ["LocalDP", "noise_rng", "privatize", "split_task_privacy"]

LOCAL_FIELDS = frozenset({"mode", "noise_multiplier", "l2_norm_clip"})
CENTRAL_FIELDS = frozenset({"mode", "l2_norm_clip"})
# The server accounts for epsilon; the local step reads only the clip and the multiplier, but
# its config type carries a delta.
_UNUSED_DELTA = 1e-5


@dataclass(frozen=True)
class LocalDP:
    """What the task asks this runner to apply: in ``central`` mode (a SecAgg+ round) the clip
    alone, its noise multiplier 0 (the server adds the noise to the sum)."""

    noise_multiplier: float
    l2_norm_clip: float
    mode: Literal["local", "central"] = "local"

    def config(self) -> DPConfig:
        return DPConfig(
            mode=self.mode,
            noise_multiplier=self.noise_multiplier,
            delta=_UNUSED_DELTA,
            l2_norm_clip=self.l2_norm_clip,
        )


@dataclass(frozen=True)
class Applied:
    """One privatized update: its delta's norm before clipping, whether it was clipped, and
    the norm of what is posted (clipped delta plus noise)."""

    norm_before: float
    clipped: bool
    norm_posted: float


def split_task_privacy(config: Any) -> tuple[Any, LocalDP | None]:
    """The task config without the ``privacy`` this runner applies (validated into
    :class:`LocalDP`: local mode, or central mode's clip in a SecAgg+ round), or the config
    unchanged and ``None`` when it asks for neither."""
    if not isinstance(config, Mapping):
        return config, None
    privacy = config.get("privacy")
    if not isinstance(privacy, Mapping):
        return config, None
    if privacy.get("mode") == "central":
        return {**config, "privacy": None}, _central_clip(config, privacy)
    if privacy.get("mode") != "local":
        return config, None
    _refuse_unknown(privacy, LOCAL_FIELDS, "local")
    noise = privacy.get("noise_multiplier")
    clip = privacy.get("l2_norm_clip")
    for key, value in (("noise_multiplier", noise), ("l2_norm_clip", clip)):
        if value is None:
            raise FlTaskError(f"privacy.{key}", f"privacy.{key} is required in local mode")
    local = LocalDP(
        noise_multiplier=read_float(noise, "privacy.noise_multiplier", FlTaskError, minimum=0.0),
        l2_norm_clip=_clip(clip),
    )
    return {**config, "privacy": None}, local


def _central_clip(config: Mapping[str, Any], privacy: Mapping[str, Any]) -> LocalDP:
    if config.get("secure_aggregation") is None:
        raise FlTaskError(
            "privacy",
            "central-mode privacy asks the runner to clip only in a secure aggregation round "
            "(otherwise the server clips); this task has no secure_aggregation",
        )
    _refuse_unknown(privacy, CENTRAL_FIELDS, "central")
    if privacy.get("l2_norm_clip") is None:
        raise FlTaskError("privacy.l2_norm_clip", "privacy.l2_norm_clip is required")
    return LocalDP(0.0, _clip(privacy["l2_norm_clip"]), mode="central")


def _refuse_unknown(privacy: Mapping[str, Any], known: frozenset[str], mode: str) -> None:
    for key in privacy:
        if key not in known:
            raise FlTaskError(f"privacy.{key}", f"unknown field {key!r} in {mode}-mode privacy")


def _clip(value: Any) -> float:
    return read_float(value, "privacy.l2_norm_clip", FlTaskError, minimum=0.0, min_exclusive=True)


def noise_rng() -> np.random.Generator:
    """A generator seeded from the OS's entropy (see the module docstring)."""
    return np.random.default_rng(secrets.randbits(128))


def privatize(
    local: LocalDP, result: TrainResult, global_weights: Weights
) -> tuple[TrainResult, Applied]:
    """The training result with its weights replaced by ``global + clip(delta) + noise``
    (no noise in central mode). The noise is drawn tensor by tensor in name order (a decoded
    model's order varies)."""
    ordered = dict(sorted(global_weights.items()))
    weights, clipped = local_dp_update(local.config(), result.weights, ordered, noise_rng())
    posted = joint_l2_norm(model_delta(weights, global_weights))
    return replace(result, weights=weights), Applied(clipped.norm, clipped.clipped, posted)
