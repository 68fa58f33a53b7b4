"""Compute pricing and metering (ARCHITECTURE §6), in integer base units.

A compute task costs ``base + rate * seconds`` where the per-second rate is

    rate = max(cpu_cores, 1) * PRICE_CPU_CORE_SECOND
         + memory_mb * PRICE_MEMORY_MB_SECOND
         + gpus * PRICE_GPU_SECOND

(every task occupies at least one core's slot). CPU cores may be fractional, so the rate is
kept in thousandths of a base unit per second (``rate_milli``) and the charge is rounded up to a
whole base unit only once, at the end:

    charge(ms) = base + ceil(rate_milli * ms / 1_000_000)

The **reservation** (escrow) is the charge for the whole ``timeout_seconds`` (or the configured
default when a task has none); **metering** bills the server-observed start→complete time at
the price snapshotted into the reservation, capped by the reservation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MILLI = 1000


@dataclass(frozen=True, slots=True)
class ComputePrice:
    """Unit prices in base units. All zero means compute work is free."""

    base: int = 0
    cpu_core_second: int = 0
    memory_mb_second: int = 0
    gpu_second: int = 0

    @property
    def free(self) -> bool:
        return not (self.base or self.cpu_core_second or self.memory_mb_second or self.gpu_second)

    def rate_milli(self, cpu_cores: float, memory_mb: int, gpus: int) -> int:
        """Thousandths of a base unit per second for these resources."""
        millicores = max(round(cpu_cores * MILLI), MILLI)
        return (
            millicores * self.cpu_core_second
            + MILLI * max(memory_mb, 0) * self.memory_mb_second
            + MILLI * max(gpus, 0) * self.gpu_second
        )

    def snapshot(self, cpu_cores: float, memory_mb: int, gpus: int) -> dict[str, Any]:
        """What a reservation stores: the price it was made at, for these resources."""
        return {
            "base": str(self.base),
            "rate_milli": str(self.rate_milli(cpu_cores, memory_mb, gpus)),
        }


def charge(base: int, rate_milli: int, milliseconds: int) -> int:
    """``base + ceil(rate_milli * ms / 10**6)``; negative durations bill as zero."""
    ms = max(milliseconds, 0)
    return base + -(-rate_milli * ms // (MILLI * MILLI))


def reservation_amount(base: int, rate_milli: int, timeout_seconds: int) -> int:
    """The most a task can be billed: its charge for the whole timeout."""
    return charge(base, rate_milli, timeout_seconds * MILLI)


def metered_amount(snapshot: dict[str, Any], milliseconds: int, cap: int) -> int:
    """The bill for ``milliseconds`` of server-observed run time at the snapshotted price,
    never above ``cap`` (the reservation)."""
    return min(charge(int(snapshot["base"]), int(snapshot["rate_milli"]), milliseconds), cap)
