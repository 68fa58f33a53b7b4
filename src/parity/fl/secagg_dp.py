"""Central differential privacy on a SecAgg+ round: DP-FedAvg's noise on the unmasked sum.

The server never holds an individual update under secure aggregation, so it cannot clip one.
Each runner clips its own delta ``local - global`` to the session's ``l2_norm_clip`` C before
it quantizes and masks it, and weighs it fully (a weight factor of 1 whatever its example
count: an example-weighted mean would let one participant's weight scale its influence past
C). The round's ``fl_train`` tasks say so with ``"privacy": {"mode": "central",
"l2_norm_clip": C}`` (:func:`task_privacy`); a runner that does not know that setting refuses
the task rather than send an update it did not clip.

At unmasking (:func:`noised_mean`, in the worker thread that unmasks) the exact sum of the m
survivors' clipped deltas is divided by m and Gaussian noise ``sigma = z * C / m`` is added per
coordinate (:func:`parity.core.fl.dp.add_central_noise`, the central mode's mechanism), before
anything is stored: the noised mean is the only aggregate that reaches the content store or
the round's metrics. The epsilon in each round's metrics and the ``max_epsilon`` stop are plain
central DP's (:mod:`parity.fl.privacy`).

What the guarantee rests on: each honest runner's clip, so one participant moves the sum by at
most C plus the stochastic rounding (less than one quantization step per value); a runner that
skips the clip can spoil the model but not weaken anyone else's bound. Adaptive clipping needs
the count of clipped updates, which the secure sum hides, and participant sampling needs a
denominator that does not depend on who took part: both are refused with secure aggregation
at session create.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from parity.core.fl.dp import add_central_noise
from parity.core.fl.dp_config import DPConfig
from parity.core.fl.quantize import Layout, dequantize_sum, unflatten
from parity.core.fl.secagg_config import SecAggConfig, check_capacity
from parity.fl import privacy
from parity.fl.models import FLSession

__all__ = ["central_dp", "noised_mean", "task_privacy"]


def central_dp(fl_session: FLSession) -> DPConfig | None:
    """The session's DP settings when its SecAgg+ rounds add the noise (central mode with
    secure aggregation), else ``None``."""
    config: Mapping[str, Any] = fl_session.config or {}
    settings = config.get("privacy_config")
    if not isinstance(settings, Mapping) or settings.get("secure_aggregation") in (None, False):
        return None
    dp = privacy.dp_of(config)
    return dp if dp is not None and dp.mode == "central" else None


def task_privacy(fl_session: FLSession) -> dict[str, Any] | None:
    """The ``privacy`` of a SecAgg+ round's ``fl_train`` task under central DP: the clip the
    runner applies before masking (the noise is the server's)."""
    dp = central_dp(fl_session)
    if dp is None:
        return None
    return {"mode": "central", "l2_norm_clip": dp.l2_norm_clip}


def noised_mean(
    dp: DPConfig,
    total: NDArray[Any],
    num_inputs: int,
    config: SecAggConfig,
    layout: Layout,
    rng: np.random.Generator | None = None,
) -> tuple[dict[str, NDArray[np.float64]], dict[str, Any]]:
    """The mean of ``num_inputs`` clipped, fully weighed deltas from their unmasked sum of
    quantized levels, plus ``N(0, (z * C / m)^2)`` per coordinate, and the round's DP figures.
    The sum's last value (the weight factors) is not used: m is exact. Pure but for ``rng``
    (the OS's entropy unless given, :func:`parity.fl.privacy.noise_rng`)."""
    check_capacity(config, num_inputs)
    summed = dequantize_sum(total, num_inputs, config.clipping_range, config.quantization_range)
    # Noise is drawn tensor by tensor in the layout's (name) order.
    mean = unflatten(summed[:-1] / num_inputs, layout)
    noised, std = add_central_noise(
        mean, dp, num_inputs, privacy.noise_rng() if rng is None else rng
    )
    return noised, {
        "dp_clip_norm": dp.l2_norm_clip,
        "dp_noise_std": std,
        "dp_num_updates": num_inputs,
    }
