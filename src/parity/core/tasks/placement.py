"""Fit and placement of tasks on runners (ARCHITECTURE §4, "Config per type and fit").

Resource keys equal capability keys: ``cpu_cores``, ``memory_mb``, ``gpus``, ``docker``.
Fit = requirements ≤ capabilities - active claims' requirements; load = active claims / max
concurrent tasks, with the heartbeat CPU usage as tie-break.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

__all__ = [
    "RESOURCE_KEYS",
    "Resources",
    "RunnerLoad",
    "choose_runner",
    "fits",
    "is_eligible",
    "load",
    "sum_resources",
]

# Summed fractional CPU claims (0.1 + 0.2) must not fail a fit by rounding.
_CPU_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of runner resources: a task's requirement, a runner's capacity or its use.

    ``cpu_cores``, ``memory_mb`` and ``gpus`` are quantities; ``docker`` is a capability flag
    (required / available), not consumed by claims.
    """

    cpu_cores: float = 0
    memory_mb: int = 0
    gpus: int = 0
    docker: bool = False

    def __post_init__(self) -> None:
        """Refuse negative quantities; the ValueError names the field."""
        for name in ("cpu_cores", "memory_mb", "gpus"):
            value = getattr(self, name)
            if not value >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0, got {value}")

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, object], *, ignore: Collection[str] = ()
    ) -> Resources:
        """Build from a ``resources`` / ``capabilities`` mapping whose keys are
        :data:`RESOURCE_KEYS`; missing keys take their zero default.

        Keys listed in ``ignore`` are skipped (e.g. the non-resource capability ``fl``); any
        other unknown key, a value of the wrong type (booleans are not numbers, ``memory_mb`` and
        ``gpus`` are integers) or a negative quantity raises ValueError naming the key.
        """
        values: dict[str, Any] = {}
        for key, value in mapping.items():
            if key in ignore:
                continue
            if key not in RESOURCE_KEYS:
                raise ValueError(f"unknown resource key {key!r}")
            values[key] = _coerce(key, value)
        return cls(**values)


RESOURCE_KEYS: frozenset[str] = frozenset(f.name for f in fields(Resources))
"""The resource keys a task may require and a runner reports as capabilities."""


def _coerce(key: str, value: object) -> float | int | bool:
    """Type-check one resource value; bool is refused where a number is expected."""
    if key == "docker":
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be a boolean, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if key != "cpu_cores" and not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{key} must be >= 0, got {value}")
    return value


def sum_resources(items: Iterable[Resources]) -> Resources:
    """Component-wise sum of the quantities; ``docker`` is true when any item has it."""
    cpu = 0.0
    memory = 0
    gpus = 0
    docker = False
    for item in items:
        cpu += item.cpu_cores
        memory += item.memory_mb
        gpus += item.gpus
        docker = docker or item.docker
    return Resources(cpu_cores=cpu, memory_mb=memory, gpus=gpus, docker=docker)


def fits(required: Resources, capacity: Resources, in_use: Resources) -> bool:
    """True when ``required ≤ capacity - in_use`` for every quantity, and a runner without
    docker is never given a task that requires it. ``in_use`` is the sum of the runner's active
    claims' requirements (see :func:`sum_resources`); its ``docker`` flag is ignored.
    """
    if required.docker and not capacity.docker:
        return False
    return (
        required.cpu_cores <= capacity.cpu_cores - in_use.cpu_cores + _CPU_EPSILON
        and required.memory_mb <= capacity.memory_mb - in_use.memory_mb
        and required.gpus <= capacity.gpus - in_use.gpus
    )


@dataclass(frozen=True, slots=True)
class RunnerLoad:
    """A runner as placement sees it: capacity, what its active claims use, and its labels.

    ``cpu_usage`` is the last heartbeat's CPU fraction (0-1), None when not reported.
    """

    runner_id: str
    capacity: Resources
    in_use: Resources
    active_claims: int
    max_concurrent_tasks: int
    cpu_usage: float | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        """Refuse counts that would make load undefined; the ValueError names the field."""
        if self.max_concurrent_tasks < 1:
            raise ValueError(f"max_concurrent_tasks must be >= 1, got {self.max_concurrent_tasks}")
        if self.active_claims < 0:
            raise ValueError(f"active_claims must be >= 0, got {self.active_claims}")


def load(runner: RunnerLoad) -> float:
    """``active_claims / max_concurrent_tasks`` (1.0 = full)."""
    return runner.active_claims / runner.max_concurrent_tasks


def is_eligible(
    required: Resources,
    required_labels: Mapping[str, str],
    runner: RunnerLoad,
    excluded_runner_ids: Collection[str] = (),
) -> bool:
    """True when the runner is not excluded, has a free slot
    (``active_claims < max_concurrent_tasks``), carries every required label with the same
    value, and :func:`fits` the requirement.
    """
    if runner.runner_id in excluded_runner_ids:
        return False
    if runner.active_claims >= runner.max_concurrent_tasks:
        return False
    if any(runner.labels.get(key) != value for key, value in required_labels.items()):
        return False
    return fits(required, runner.capacity, runner.in_use)


def choose_runner(
    required: Resources,
    required_labels: Mapping[str, str],
    runners: Iterable[RunnerLoad],
    excluded: Collection[str] = (),
) -> str | None:
    """Id of the eligible runner with the least :func:`load`, or None when none is eligible.

    Ties break on the heartbeat ``cpu_usage`` (lower first; unknown after any known value),
    then on ``runner_id``, so the same input always gives the same runner.
    """
    candidates = [r for r in runners if is_eligible(required, required_labels, r, excluded)]
    if not candidates:
        return None
    best = min(candidates, key=_placement_key)
    return best.runner_id


def _placement_key(runner: RunnerLoad) -> tuple[float, bool, float, str]:
    """Sort key: (load, cpu unknown, cpu usage, id)."""
    unknown = runner.cpu_usage is None
    cpu = 0.0 if runner.cpu_usage is None else runner.cpu_usage
    return (load(runner), unknown, cpu, runner.runner_id)
