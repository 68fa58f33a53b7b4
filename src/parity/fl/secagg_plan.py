"""A SecAgg+ round's fixed plan on the server: the session's settings, the participants' ids
in the protocol, the vector they mask and the communication graph every participant also
computes from its task config (:func:`parity.core.fl.secagg.plan_round`, computed once per
round: every stage message of the round needs it)."""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Mapping

from parity.core.fl.quantize import Layout
from parity.core.fl.secagg import RoundSetup, plan_round, round_context
from parity.core.fl.secagg_config import SecAggConfig, parse_secure_aggregation
from parity.fl.models import FLRound, FLSession
from parity.fl.secagg_models import FLSecAggRound

__all__ = [
    "b64",
    "config_of",
    "enabled",
    "layout_of",
    "members",
    "pid",
    "setups_of",
    "vector_size",
]


def pid(index: int) -> str:
    """A participant's id in the protocol: its participant index, as text."""
    return str(index)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def config_of(fl_session: FLSession) -> SecAggConfig | None:
    """The session's SecAgg+ settings (validated at create), or None for a plain session."""
    privacy = (fl_session.config or {}).get("privacy_config")
    if not isinstance(privacy, Mapping):
        return None
    return parse_secure_aggregation(privacy)


def enabled(fl_session: FLSession) -> bool:
    return config_of(fl_session) is not None


def layout_of(fl_session: FLSession) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes, sorted by name: the runners flatten in the same order."""
    shapes = fl_session.model_shapes or {}
    return sorted((name, tuple(int(d) for d in shape)) for name, shape in shapes.items())


def vector_size(layout: Layout) -> int:
    """Values a participant masks: every model parameter and its weight factor."""
    return sum(math.prod(shape) for _, shape in layout) + 1


def setups_of(
    fl_session: FLSession, round_: FLRound, state: FLSecAggRound, config: SecAggConfig
) -> dict[str, RoundSetup]:
    """The round's plan, as every participant computes it from its task config (computed
    once per round: every stage message of the round needs it)."""
    return _plan(
        tuple(state.participants),
        config,
        state.graph_seed,
        str(fl_session.id),
        round_.number,
        state.vector_size,
    )


@functools.lru_cache(maxsize=64)
def _plan(
    participants: tuple[int, ...],
    config: SecAggConfig,
    graph_seed: str,
    session_id: str,
    number: int,
    vector_size: int,
) -> dict[str, RoundSetup]:
    return plan_round(
        [pid(i) for i in participants],
        config,
        bytes.fromhex(graph_seed),
        round_context(session_id, number),
        vector_size,
    )


def members(state: FLSecAggRound, stage: str) -> list[int]:
    """Who took part in a closed stage (empty while it is open)."""
    return [int(i) for i in (state.stages or {}).get(stage, {}).get("members", [])]
