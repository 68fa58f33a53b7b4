"""The aggregation methods a session may name, their parameters, and one entry point.

:func:`parse_method` validates ``aggregation_method`` and its parameters when a session is
created (``unknown aggregation 'x'; valid: ...``, ``missing parameter 'eta' for fedadam``);
:func:`aggregate` runs a round's aggregation from all updates; streaming methods
(:attr:`AggregatorInfo.streaming`) can instead fold updates into a
:class:`~parity.core.fl.aggregation.WeightedSum` as they arrive and finish with
:func:`aggregate_mean`.

=========================================  =======================  =============================
method (aliases)                           required parameters      server side
=========================================  =======================  =============================
``fedavg`` (``federated_averaging``)       —                        example-weighted mean
``fedprox``                                ``mu``                   FedAvg; ``mu`` goes to runners
``fedadagrad`` / ``fedadam`` / ``fedyogi``  ``eta``, ``beta_1``,     FedAvg mean, then the adaptive
                                           ``tau`` (+ ``beta_2``    server step (:mod:`.fedopt`)
                                           for adam and yogi)
``fedmedian`` (``median``)                 —                        coordinate-wise median
``trimmed_mean`` (``fedtrimmedavg``)       ``beta``                 coordinate-wise trimmed mean
``krum``                                   ``num_malicious``        lowest Krum score
``multi_krum``                             ``num_malicious``,       weighted mean of the
                                           ``num_selected``         ``num_selected`` best
=========================================  =======================  =============================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from parity.core.fl._params import read_float, read_int, read_mapping
from parity.core.fl.aggregation import (
    ClientUpdate,
    TensorMap,
    Weights,
    as_float32,
    check_same_layout,
    checked_updates,
    fedavg,
)
from parity.core.fl.errors import AggregationError
from parity.core.fl.fedopt import FEDOPT_METHODS, ServerOptState, server_opt_step
from parity.core.fl.robust import fedmedian, krum, trimmed_mean

__all__ = [
    "AGGREGATORS",
    "ALIASES",
    "AggregationResult",
    "AggregatorInfo",
    "MethodConfig",
    "aggregate",
    "aggregate_mean",
    "canonical_method",
    "parse_method",
]

_Reader = Callable[[Any, str], Any]


def _positive(value: Any, name: str) -> float:
    return read_float(value, name, AggregationError, minimum=0.0, min_exclusive=True)


def _non_negative(value: Any, name: str) -> float:
    return read_float(value, name, AggregationError, minimum=0.0)


def _decay(value: Any, name: str) -> float:
    return read_float(value, name, AggregationError, minimum=0.0, maximum=1.0, max_exclusive=True)


def _trim(value: Any, name: str) -> float:
    return read_float(value, name, AggregationError, minimum=0.0, maximum=0.5, max_exclusive=True)


def _count(value: Any, name: str) -> int:
    return read_int(value, name, AggregationError, minimum=0)


def _at_least_one(value: Any, name: str) -> int:
    return read_int(value, name, AggregationError, minimum=1)


@dataclass(frozen=True)
class AggregatorInfo:
    """What a method needs: required parameters (name -> reader), whether it can be computed
    from a running weighted sum, whether it keeps state between rounds, and the optional
    parameters it also takes (name -> reader)."""

    name: str
    required: Mapping[str, _Reader]
    streaming: bool
    stateful: bool = False
    optional: Mapping[str, _Reader] = field(default_factory=dict)

    @property
    def params(self) -> frozenset[str]:
        """Every parameter the method takes, required or optional: a session-create body
        naming any other is refused (:mod:`parity.fl.spec`)."""
        return frozenset((*self.required, *self.optional))

    def min_updates(self, params: Mapping[str, Any]) -> int:
        """Fewest updates a round needs for this method with these parameters."""
        if self.name in ("krum", "multi_krum"):
            return max(2 * int(params["num_malicious"]) + 3, int(params.get("num_selected", 1)))
        return 1


_FEDOPT_COMMON: dict[str, _Reader] = {"eta": _positive, "beta_1": _decay, "tau": _positive}

AGGREGATORS: dict[str, AggregatorInfo] = {
    "fedavg": AggregatorInfo("fedavg", {}, streaming=True),
    "fedprox": AggregatorInfo("fedprox", {"mu": _non_negative}, streaming=True),
    "fedadagrad": AggregatorInfo("fedadagrad", _FEDOPT_COMMON, streaming=True, stateful=True),
    "fedadam": AggregatorInfo(
        "fedadam", _FEDOPT_COMMON | {"beta_2": _decay}, streaming=True, stateful=True
    ),
    "fedyogi": AggregatorInfo(
        "fedyogi", _FEDOPT_COMMON | {"beta_2": _decay}, streaming=True, stateful=True
    ),
    "fedmedian": AggregatorInfo("fedmedian", {}, streaming=False),
    "trimmed_mean": AggregatorInfo("trimmed_mean", {"beta": _trim}, streaming=False),
    "krum": AggregatorInfo("krum", {"num_malicious": _count}, streaming=False),
    "multi_krum": AggregatorInfo(
        "multi_krum", {"num_malicious": _count, "num_selected": _at_least_one}, streaming=False
    ),
}
ALIASES = {
    "federated_averaging": "fedavg",
    "median": "fedmedian",
    "fedtrimmedavg": "trimmed_mean",
    "multikrum": "multi_krum",
}


@dataclass(frozen=True)
class MethodConfig:
    """A validated aggregation method (canonical name) and its typed parameters."""

    method: str
    params: Mapping[str, Any]

    @property
    def info(self) -> AggregatorInfo:
        return AGGREGATORS[self.method]


@dataclass(frozen=True)
class AggregationResult:
    """The next global model, the optimiser state to keep (stateful methods only) and, for
    Krum, the indices of the updates it selected."""

    weights: Weights
    state: ServerOptState | None = None
    selected: Sequence[int] | None = None


def canonical_method(name: Any) -> str:
    """The canonical method name, or an error listing the valid ones."""
    if isinstance(name, str):
        key = name.strip().lower()
        key = ALIASES.get(key, key)
        if key in AGGREGATORS:
            return key
    valid = ", ".join(sorted((*AGGREGATORS, *ALIASES)))
    raise AggregationError("aggregation_method", f"unknown aggregation {name!r}; valid: {valid}")


def parse_method(
    method: Any, params: Mapping[str, Any] | None, *, min_participants: int | None = None
) -> MethodConfig:
    """Validate ``method`` and its ``params`` (other keys are ignored here: the session-create
    API refuses them, by :attr:`AggregatorInfo.params`). With ``min_participants``, also
    refuse a Krum setting that so few participants cannot meet."""
    name = canonical_method(method)
    info = AGGREGATORS[name]
    given = read_mapping(params or {}, "aggregation_params", AggregationError)
    typed: dict[str, Any] = {}
    for key, reader in info.required.items():
        if given.get(key) is None:
            raise AggregationError(key, f"missing parameter {key!r} for {name} aggregation")
        typed[key] = reader(given[key], key)
    for key, reader in info.optional.items():
        if given.get(key) is not None:
            typed[key] = reader(given[key], key)
    if min_participants is not None and info.min_updates(typed) > min_participants:
        field = (
            "num_selected"
            if name == "multi_krum" and typed["num_selected"] > min_participants
            else "num_malicious"
        )
        raise AggregationError(
            field,
            f"{name} with these parameters needs at least {info.min_updates(typed)} "
            f"participants; min_participants is {min_participants}",
        )
    return MethodConfig(name, typed)


def aggregate(
    config: MethodConfig,
    global_weights: TensorMap,
    updates: Sequence[ClientUpdate | tuple[TensorMap, int]],
    state: ServerOptState | None = None,
) -> AggregationResult:
    """One round's aggregation over every accepted update. ``global_weights`` is the model the
    round started from: every update must match its layout, and the adaptive methods step from
    it. ``state`` is the previous round's optimiser state (stateful methods)."""
    checked = checked_updates(updates, global_weights)
    name, params = config.method, config.params
    if config.info.streaming:
        return aggregate_mean(config, global_weights, fedavg(checked), state)
    if name == "fedmedian":
        return AggregationResult(fedmedian(checked))
    if name == "trimmed_mean":
        return AggregationResult(trimmed_mean(checked, params["beta"]))
    weights, selected = krum(checked, params["num_malicious"], params.get("num_selected", 1))
    return AggregationResult(weights, selected=selected)


def aggregate_mean(
    config: MethodConfig,
    global_weights: TensorMap,
    mean_weights: TensorMap,
    state: ServerOptState | None = None,
) -> AggregationResult:
    """Finish a streaming method from the example-weighted mean of the updates."""
    if not config.info.streaming:
        raise AggregationError(
            "aggregation_method", f"{config.method} needs every update, not only their mean"
        )
    check_same_layout(global_weights, mean_weights, "the mean model")
    if config.method in FEDOPT_METHODS:
        weights, new_state = server_opt_step(
            config.method, global_weights, mean_weights, state, config.params
        )
        return AggregationResult(weights, state=new_state)
    return AggregationResult(as_float32(mean_weights))
